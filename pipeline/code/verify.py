"""Verifying responses by running them: extract the program, build the job, run it in the sandbox.

The one path the filter rule ``failed_tests`` and the code benchmarks of ``distill eval`` share.
A response without a program (see :mod:`pipeline.code.extract`) is ``failed`` without running
anything, with the reason in ``detail`` and ``extra["extract"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pipeline.code.extract import extract_program
from pipeline.code.sandbox import Outcome, Sandbox
from pipeline.code.tests import TestSpec, build_job, parse_tests

__all__ = ["prepare", "verify_many", "verify"]

_NO_PROGRAM = {"unclosed_think": "no program: the response has no closing </think>",
               "no_program": "no program: no closed ```python block after </think>"}


def prepare(response: str, tests: TestSpec | Any, require_think: bool = True) -> tuple[dict[str, Any] | None, Outcome | None]:
    """``(job, None)`` to run, or ``(None, outcome)`` when there is nothing to run."""
    spec = tests if isinstance(tests, TestSpec) else parse_tests(tests)
    program, why = extract_program(response, require_think=require_think)
    if program is None:
        return None, Outcome("failed", total=spec.count, detail=_NO_PROGRAM[why], extra={"extract": why})
    return build_job(spec, program), None


def verify_many(items: Iterable[tuple[str, TestSpec | Any]], sandbox: Sandbox, require_think: bool = True,
                workers: int | None = None) -> Iterator[Outcome]:
    """Outcomes for ``(response, tests)`` pairs, in order, ``workers`` sandboxes at a time."""
    def jobs() -> Iterator[dict[str, Any] | Outcome]:
        for response, tests in items:
            job, outcome = prepare(response, tests, require_think)
            yield outcome if outcome is not None else job

    yield from sandbox.run_many(jobs(), workers=workers)


def verify(response: str, tests: TestSpec | Any, sandbox: Sandbox, require_think: bool = True) -> Outcome:
    job, outcome = prepare(response, tests, require_think)
    return outcome if outcome is not None else sandbox.run(job)
