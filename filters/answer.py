"""Rule 8, ``wrong_answer``: rejection sampling, keep only traces whose final answer is right.

For records in ``domains`` (default math) that carry a reference ``answer``, the response is graded by
the shared grader :func:`pipeline.grading.grade` (the same code the eval stage uses: last
``\\boxed{}`` or "the answer is X", a conservative normal form, then math-verify with timeouts).
Anything but ``correct`` is rejected, including ``no_answer``, ``unclosed_think`` and ``timeout``:
a trace we cannot verify is not a verified trace. The grader's status is recorded per record in
the report (``statuses``), and records without a reference are counted as ``no_reference`` and
pass (nothing to check them against).
"""

from __future__ import annotations

from pipeline.config import Section
from pipeline.grading import grade

from filters.base import Parsed, Rule


class AnswerConfig(Section):
    enabled: bool = True
    domains: list[str] = ["math"]
    timeout_s: float = 5.0


class AnswerRule(Rule):
    name = "wrong_answer"

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
            p.notes[self.name] = "no_reference"
            return False
        return True

    def check(self, p: Parsed) -> str | None:
        g = grade(p.response, p.reference or "", timeout_s=self.timeout_s, require_think=True)
        p.notes[self.name] = g.status
        if g.correct:
            return None
        return f"{g.status}: got {g.extracted!r}, reference {p.reference!r}"[:300]
