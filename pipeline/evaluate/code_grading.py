"""Grade fields for code samples: run each response's program against its tests in the sandbox.

A graded code sample gets ``correct`` (all tests passed), ``grade_status`` (the sandbox outcome:
``passed``, ``failed``, ``timeout``, ``runtime_error``, ``memory_limit``, ``output_limit``,
``sandbox_error``; or ``no_program`` / ``unclosed_think`` when the answer holds no program),
``extracted`` (None: there is no answer to vote on) and ``code`` (the outcome: which test decided
it, passed/total, detail, expected vs got, seconds). Timeouts count as wrong; the metrics report
their rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.code.sandbox import Outcome, Sandbox
from pipeline.code.verify import verify_many

__all__ = ["code_grade_fields", "outcome_record"]

_KEEP = ("status", "test", "passed", "total", "detail", "expected", "got", "seconds")


def outcome_record(o: Outcome) -> dict[str, Any]:
    """The compact outcome stored per sample (details already truncated by the harness)."""
    d = {k: getattr(o, k) for k in _KEEP if getattr(o, k) not in (None, "")}
    if o.status == "runtime_error" and o.stderr:
        d["stderr_tail"] = o.stderr[-500:]
    d["seconds"] = round(o.seconds, 3)
    return d


def code_grade_fields(items: Sequence[tuple[str, Any]], sandbox: Sandbox, require_think: bool,
                      workers: int) -> list[dict[str, Any]]:
    """Grade fields for ``(response, tests)`` pairs, in order."""
    out = []
    for o in verify_many(items, sandbox, require_think=require_think, workers=workers):
        out.append({"extracted": None, "correct": o.ok, "grade_status": o.extra.get("extract") or o.status,
                    "code": outcome_record(o)})
    return out
