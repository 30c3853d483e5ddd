"""Rule ``wrong_answer``: rejection sampling, keep only traces whose final answer is right.

For records in ``domains`` (default math) that carry a reference ``answer``, the response is graded by
the shared grader :func:`pipeline.grading.grade` (the same code the eval stage uses: last
``\\boxed{}`` or "the answer is X", a conservative normal form, then math-verify with timeouts).
Anything but ``correct`` is rejected, including ``no_answer``, ``unclosed_think`` and ``timeout``:
a trace we cannot verify is not a verified trace. The grader's status is recorded per record in
the report (``statuses``), and records without a reference are counted as ``no_reference`` and
pass (nothing to check them against).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipeline.config import Section
from pipeline.grading import grade

from filters.base import Parsed, Rule


class AnswerConfig(Section):
    enabled: bool = True
    domains: list[str] = ["math"]
    timeout_s: float = 5.0


class AnswerRule(Rule):
    key, reason, Config = "answer", "wrong_answer", AnswerConfig

    def __init__(self, cfg: AnswerConfig):
        self.domains = set(cfg.domains)
        self.timeout_s = cfg.timeout_s
        # Warm up once per process: the first math-verify call imports sympy and its LaTeX
        # grammar (~1.5 s), which must not land on the first real record of every worker.
        grade("<think>.</think> \\boxed{1}", "2", timeout_s=self.timeout_s)

    def applies(self, p: Parsed) -> bool:
        if p.domain not in self.domains:
            return False
        if p.reference is None:
            p.notes[self.reason] = "no_reference"
            return False
        return True

    def check(self, p: Parsed) -> str | None:
        g = grade(p.response, p.reference or "", timeout_s=self.timeout_s, require_think=True)
        p.notes[self.reason] = g.status
        if g.correct:
            return None
        return f"{g.status}: got {g.extracted!r}, reference {p.reference!r}"[:300]

    @classmethod
    def note_summary(cls, notes: Counter[str]) -> dict[str, Any]:
        """The grader's statuses: how many records were graded, and how many had no reference."""
        if not notes:
            return {}
        return {"graded": sum(v for k, v in notes.items() if k != "no_reference"),
                "no_reference": notes.get("no_reference", 0), "statuses": dict(sorted(notes.items()))}

    @classmethod
    def note_line(cls, entry: dict[str, Any]) -> str | None:
        if "statuses" not in entry:
            return None
        return (f"Answer grading: {entry['graded']} graded, {entry['no_reference']} without a reference; statuses: "
                + ", ".join(f"{k} {v}" for k, v in entry["statuses"].items()) + ".")
