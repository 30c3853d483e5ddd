"""Code benchmarks: HumanEval, MBPP (the 500-task test split) and any JSONL with a ``tests`` field.

Each problem becomes a :class:`~pipeline.evaluate.benchmarks.Problem` whose ``answer`` is empty and
whose ``meta["tests"]`` holds the tests in the record format of :mod:`pipeline.code.tests`; the
response is graded by running the program it ends with (:mod:`pipeline.code.verify`).

Prompt texts (the ``code_function`` template then asks for the solution in one ```python block):

* ``humaneval``: "Complete the following Python function:" and the task's prompt (signature +
  docstring) in a fenced block. The tests are ``check(entry_point)`` from the task's ``test``; a
  response may give the whole function or only its body (see :func:`pipeline.code.tests.build_job`).
* ``mbpp``: the task text, then "Your code should pass these tests:" and its three asserts (the
  MBPP paper's format: the asserts are where the function name is given). Tests: the asserts after
  ``test_setup_code``. Only rows whose ``split`` is ``spec.split`` (``test``: task_id 11-510).
* ``code`` (any file): ``problem_column`` is the prompt, ``tests`` the tests field.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.code.tests import TestsError, parse_tests
from pipeline.records import RecordError

__all__ = ["code_problem", "load_code_problems", "CODE_LAYOUTS"]

CODE_LAYOUTS = ("humaneval", "mbpp", "code")


def _humaneval(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    text = f"Complete the following Python function:\n\n```python\n{row['prompt'].rstrip()}\n```"
    return text, {"format": "humaneval", "prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]}


def _mbpp(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    asserts = list(row["test_list"])
    text = f"{row['text'].strip()}\nYour code should pass these tests:\n\n" + "\n".join(asserts)
    return text, {"format": "mbpp", "asserts": asserts, "setup": row.get("test_setup_code") or ""}


def code_problem(row: dict[str, Any], layout: str, problem_column: str = "problem") -> tuple[str, dict[str, Any]]:
    """``(prompt text, tests)`` of one row; KeyError/TypeError for a missing field."""
    if layout == "humaneval":
        return _humaneval(row)
    if layout == "mbpp":
        return _mbpp(row)
    return str(row[problem_column]), row["tests"]


_NEEDS = {"humaneval": ("prompt", "test", "entry_point"), "mbpp": ("text", "test_list")}


def load_code_problems(rows: Iterable[tuple[str, int, dict[str, Any]]], spec: Any) -> list[Any]:
    """Problems of a code benchmark from ``(source, line, row)``, validated, first ``spec.limit``."""
    from pipeline.evaluate.benchmarks import Problem

    out: list[Any] = []
    seen: dict[str, int] = {}
    for n, (src, line, row) in enumerate(rows):
        if spec.limit is not None and len(out) >= spec.limit:
            break
        for col in _NEEDS.get(spec.layout, (spec.problem_column, "tests")):
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
        out.append(Problem(pid, text, "", line, meta={"tests": tests}))
    return out
