"""Code benchmarks: HumanEval, MBPP (the 500-task test split) and any JSONL with a ``tests`` field.

Each problem is a :class:`CodeTask`, which the benchmark loader turns into a problem whose
``answer`` is empty and whose ``meta["tests"]`` holds the tests in the record format of :mod:`pipeline.code.tests`; the
response is graded by running the program it ends with (:mod:`pipeline.code.verify`).

Prompt texts and tests come from :mod:`pipeline.code.datasets` (the ``code_function`` template then
asks for the solution in one ```python block). ``mbpp`` keeps only rows whose ``split`` is
``spec.split`` (``test``: task_id 11-510); ``layout: code`` reads ``problem_column`` + ``tests``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.code.datasets import REQUIRED, code_problem, decontam_text
from pipeline.code.tests import TestsError, parse_tests
from pipeline.records import RecordError

__all__ = ["CodeTask", "load_code_problems"]


@dataclass(frozen=True)
class CodeTask:
    id: str
    text: str  # the prompt text
    line: int
    tests: Any  # the tests field (pipeline.code.tests), validated
    decontam_text: str  # the task's own words, for n-gram decontamination


def load_code_problems(rows: Iterable[tuple[str, int, dict[str, Any]]], spec: Any) -> list[CodeTask]:
    """Tasks of a code benchmark from ``(source, line, row)``, validated, first ``spec.limit``."""
    out: list[CodeTask] = []
    seen: dict[str, int] = {}
    for n, (src, line, row) in enumerate(rows):
        if spec.limit is not None and len(out) >= spec.limit:
            break
        for col in REQUIRED.get(spec.layout, (spec.problem_column, "tests")):
            if not row.get(col):
                raise RecordError(src, line, f"missing or empty (benchmark {spec.name}, layout {spec.layout})", field=col)
        text, tests = code_problem(row, spec.layout, spec.problem_column)
        try:
            parse_tests(tests)
        except TestsError as exc:
            raise RecordError(src, line, str(exc), field=exc.field) from None
        pid = str(row[spec.id_column]) if spec.id_column and row.get(spec.id_column) is not None else str(n)
        if pid in seen:
            raise RecordError(src, line, f"duplicate problem id {pid!r} (first at line {seen[pid]})",
                              field=spec.id_column or "id")
        seen[pid] = line
        out.append(CodeTask(pid, text, line, tests, decontam_text(row, spec.layout, spec.problem_column)))
    return out
