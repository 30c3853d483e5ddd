"""Rule ``wrong_answer``: rejection sampling, keep only traces whose final answer is right.

For records in ``domains`` (default math and science) that carry a reference ``answer``, the
response is graded by the shared grader :func:`pipeline.grading.grade` (the same code the eval stage
uses):

* multiple choice (the record carries ``choices``, at the top or in ``meta``, or its reference is a
  single letter A-J in a domain other than math): the chosen letter is read from the final answer by
  :mod:`pipeline.choices` (boxed letter, "Answer: C", "the answer is (C)", an option's text);
  several letters are ``ambiguous``, i.e. wrong;
* math (domains in ``math_domains``): last ``\\boxed{}`` or "the answer is X", a conservative normal
  form, then math-verify with timeouts;
* anything else (free-form science, proofs) is not rule-checkable: noted ``free_form`` and passed
  on, for the optional LLM judge (:mod:`filters.judge`) to decide.

Anything but ``correct`` is rejected, including ``no_answer``, ``unclosed_think`` and ``timeout``:
a trace we cannot verify is not a verified trace. The grader's status is recorded per record in
the report (``statuses``), and records without a reference are counted as ``no_reference`` and
pass (nothing to check them against).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipeline.choices import choices_of, is_letter_reference
from pipeline.config import PositiveFloat, Section
from pipeline.grading import grade, warm_up

from filters.base import Parsed, Rule


class AnswerConfig(Section):
    enabled: bool = True
    domains: list[str] = ["math", "science"]
    math_domains: list[str] = ["math"]
    timeout_s: PositiveFloat = 5.0


def grading_kind(p: Parsed, math_domains: set[str]) -> str:
    """``choices``, ``math`` or ``free_form``: which rule grader (if any) can check this record."""
    if choices_of(p.record) is not None:
        return "choices"
    if p.domain not in math_domains and is_letter_reference(p.reference):
        return "choices"
    return "math" if p.domain in math_domains else "free_form"


class AnswerRule(Rule):
    key, reason, Config = "answer", "wrong_answer", AnswerConfig

    def __init__(self, cfg: AnswerConfig):
        self.domains = set(cfg.domains)
        self.math_domains = set(cfg.math_domains)
        self.timeout_s = cfg.timeout_s
        # Warm up once per process: the first math-verify call imports sympy and its LaTeX
        # grammar (~1.5 s), which must not land on the first real record of every worker.
        warm_up(self.timeout_s)

    def applies(self, p: Parsed) -> bool:
        if p.domain not in self.domains:
            return False
        if p.reference is None:
            p.notes[self.reason] = "no_reference"
            return False
        if grading_kind(p, self.math_domains) == "free_form":
            p.notes[self.reason] = "free_form"
            return False
        return True

    def check(self, p: Parsed) -> str | None:
        mc = grading_kind(p, self.math_domains) == "choices"
        # A letter reference without options is still multiple choice: () = letters only.
        choices = (choices_of(p.record) or ()) if mc else None
        g = grade(p.response, p.reference or "", timeout_s=self.timeout_s, require_think=True, choices=choices)
        p.notes[self.reason] = g.status
        if g.correct:
            return None
        return f"{g.status}: got {g.extracted!r}, reference {p.reference!r}"[:300]

    @classmethod
    def note_summary(cls, notes: Counter[str]) -> dict[str, Any]:
        """The grader's statuses: how many records were graded, and how many had no reference."""
        if not notes:
            return {}
        return {"graded": sum(v for k, v in notes.items() if k not in ("no_reference", "free_form")),
                "no_reference": notes.get("no_reference", 0), "free_form": notes.get("free_form", 0),
                "statuses": dict(sorted(notes.items()))}

    @classmethod
    def note_line(cls, entry: dict[str, Any]) -> str | None:
        if "statuses" not in entry:
            return None
        return (f"Answer grading: {entry['graded']} graded, {entry['no_reference']} without a reference; statuses: "
                + ", ".join(f"{k} {v}" for k, v in entry["statuses"].items()) + ".")
