"""The grader's regression suite: cases from public graders' own tests, and our agreement with them.

Each case (one JSON line) has ``gold`` and ``pred`` as written in the upstream test, the upstream
``label`` (1 = equivalent), ``mode`` and ``source`` (``owner/repo@commit:path`` plus a line or a
``test_function[parameter index]``). Only cases whose label is a mathematical truth are kept; the
skipped ones and why are listed in ``tests/data/grader_cases_skipped.md``.

* ``mode: answer``: ``pred`` is a bare answer (math delimiters allowed); it is graded as the content
  of a ``\\boxed{}``.
* ``mode: response``: ``pred`` is a whole response; it goes through answer extraction.

``gold`` is turned into a reference answer the way a dataset's reference would be: a boxed or
"final answer is" text gives its answer, otherwise the math delimiters are dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.grading import extract_answer, grade

__all__ = ["Case", "load_cases", "reference_of", "case_verdict", "agreement"]

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_DELIMS = re.compile(r"^\s*(?:\\\[|\\\()\s*|\s*(?:\\\]|\\\))\s*$")


@dataclass(frozen=True)
class Case:
    gold: str
    pred: str
    label: bool
    mode: str
    source: str
    line: int


def load_cases(path: str | Path) -> list[Case]:
    """Read the JSONL suite; a malformed line is an error naming file and line."""
    cases = []
    for n, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            cases.append(Case(row["gold"], row["pred"], bool(row["label"]), row["mode"], row["source"], n))
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path}:{n}: bad grader case ({exc})") from exc
        if cases[-1].mode not in ("answer", "response"):
            raise ValueError(f"{path}:{n}: field 'mode' must be 'answer' or 'response'")
    return cases


def _bare(text: str) -> str:
    return _DELIMS.sub("", _UNESCAPED_DOLLAR.sub("", text)).strip()


def reference_of(gold: str) -> str:
    """The reference answer a gold text stands for."""
    if "\\boxed" in gold or "\\fbox" in gold or re.search(r"final answer|the answer is", gold, re.I):
        found = extract_answer(gold)
        if found:
            return found
    return _bare(gold)


def case_verdict(case: Case, timeout_s: float = 5.0) -> bool:
    """Our grader's verdict on one case (True = equivalent)."""
    ref = reference_of(case.gold)
    if case.mode == "answer":
        return grade(f"\\boxed{{{_bare(case.pred)}}}", ref, timeout_s=timeout_s, require_think=False).correct
    return grade(case.pred, ref, timeout_s=timeout_s, require_think=False).correct


def agreement(cases: list[Case], timeout_s: float = 5.0) -> tuple[float, list[tuple[Case, bool]]]:
    """Share of cases where our verdict equals the label, and the disagreements ``(case, our verdict)``."""
    wrong = []
    for c in cases:
        v = case_verdict(c, timeout_s)
        if v != c.label:
            wrong.append((c, v))
    return (1.0 - len(wrong) / len(cases)) if cases else float("nan"), wrong
