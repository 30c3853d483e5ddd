"""The grader's verdict on one response, shared by the math grader (:mod:`pipeline.grading`) and the
multiple-choice grader (:mod:`pipeline.choices`), which therefore import neither each other's code
nor a cycle."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Grade", "STATUSES"]

STATUSES = ("correct", "wrong", "no_answer", "unclosed_think", "timeout", "error")


@dataclass(frozen=True)
class Grade:
    correct: bool
    extracted: str | None
    status: str  # one of STATUSES (multiple choice adds "ambiguous")
