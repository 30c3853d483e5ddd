"""Multiple-choice grading: which option letter a response chose, and whether it is the reference.

Used through the one grader (:func:`pipeline.grading.grade` with ``choices=``), so the filter's
``wrong_answer`` rule and the eval stage grade science questions the same way.

Protocol:

1. Only the text after the last ``</think>`` is read (the reasoning may weigh every option).
   Without a closed think block and with ``require_think`` the status is ``unclosed_think``.
2. The final-answer *candidate* is, in order of preference: the last ``\\boxed{...}``; else the last
   explicit phrase "Answer: X", "the (correct|final) answer is X", "the correct option is X";
   else a last line that is nothing but a letter ("C", "(C)", "**C.**").
3. A candidate is read as a letter when it is one letter (``C``, ``(C)``, ``\\text{C}``,
   ``**C**``), or a letter followed by the option text (``C) 42 J``, ``(C) 42 J``, ``C. 42 J``).
   Lower-case letters count only inside a box or parentheses: in running text "a" is an article.
4. Else, a candidate that equals one option's text (case, spaces, ``$`` and LaTeX text wrappers
   ignored; numbers in the math normal form) names that option's letter.
5. A candidate naming several distinct letters ("A and C", "A, C", ``\\boxed{AC}``) is wrong with
   status ``ambiguous``: a hedge is not an answer, and taking any one of them would reward guessing
   twice. A letter outside the options (E of four) is ``wrong``; nothing found is ``no_answer``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

from pipeline.answer_extract import extract_boxed
from pipeline.chat import THINK_CLOSE
from pipeline.verdict import Grade

__all__ = ["LETTERS", "extract_choice", "grade_choice", "choices_of", "letter_of", "format_options",
           "is_letter_reference"]

LETTERS = string.ascii_uppercase[:10]  # A-J: up to ten options (MMLU-Pro has ten)

_WRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|textrm|texttt)\s*\{([^{}]*)\}")
_ANSWER_RE = re.compile(
    r"(?:\banswer\s*(?:is|:)|(?:correct|final|right|best)\s+(?:answer|option|choice)\s*(?:is|:|would be|=)"
    r"|\boption\s+is)\s*:?\s*(.+?)\s*(?:\n|$)", re.IGNORECASE)
_LAST_LINE_RE = re.compile(r"^\W{0,4}(?:option\s+)?\(?([A-J])\)?\W{0,4}$", re.IGNORECASE)
# "(C) 42 J" / "(c) 42 J" / "C) 42 J" / "C. 42 J" / "C: 42 J" / "C, since" / "C - 42 J"; after a bare space only B-H, J
# ("C because ..."), never A or I, which are English words ("A bit ...", "I think ...").
_LEAD_LETTER_RE = re.compile(r"^(?:\(([A-Ja-j])\)\s*|([A-J])(?:\)|\.|:|,|\s+-)\s*|([B-HJ])\s+(?=\w))(.+)$", re.DOTALL)
_OPTION_WORD_RE = re.compile(r"^(?:option|choice)\s+(?=\(?[A-Ja-j]\b)", re.IGNORECASE)
_MULTI_RE = re.compile(r"^\(?([A-J])\)?(?:\s*(?:,|/|&|\band\b|\bor\b)\s*\(?([A-J])\)?)+$")


def _clean(text: str) -> str:
    """Strip LaTeX text wrappers, ``$``, markdown emphasis and surrounding punctuation."""
    s = text.strip()
    for _ in range(3):
        s = _WRAP_RE.sub(r"\1", s)
    s = s.replace("$", "").replace("**", "").replace("__", "").strip()
    return s.strip(" \t.:;,!*`'\"")


def _norm_text(text: str) -> str:
    """An option's text in a comparable form: cleaned, case-folded, no spaces, ``3.50`` -> ``3.5``."""
    s = re.sub(r"\s+", "", _clean(text).casefold())
    s = re.sub(r"(\d\.\d*?[1-9])0+(?!\d)", r"\1", s)
    return re.sub(r"(\d)\.0+(?!\d)", r"\1", s)


def _single_letter(cand: str, boxed: bool) -> str | None:
    s = _clean(cand)
    m = re.fullmatch(r"\(?\s*([A-Ja-j])\s*\)?", s)
    if not m:
        return None
    letter = m.group(1)
    if letter.islower() and not (boxed or s.startswith("(")):
        return None
    return letter.upper()


def _several_letters(cand: str) -> list[str] | None:
    s = _clean(cand)
    m = _MULTI_RE.fullmatch(s)
    if m:
        found = re.findall(r"\b[A-J]\b", s)
    elif re.fullmatch(r"[A-J]{2,10}", s):
        found = list(s)
    else:
        return None
    distinct = sorted(set(found))
    return distinct if len(distinct) > 1 else None


def _read_candidate(cand: str, choices: Sequence[str] | None, boxed: bool) -> tuple[str | None, str]:
    """``(letter or joined letters, how)``: how is ``letter``, ``text``, ``several`` or ``none``."""
    cand = _OPTION_WORD_RE.sub("", _clean(cand))  # "option C" / "choice (c)"
    letter = _single_letter(cand, boxed)
    if letter:
        return letter, "letter"
    if choices:
        want = _norm_text(cand)
        hits = [LETTERS[i] for i, c in enumerate(choices) if want and _norm_text(str(c)) == want]
        if len(hits) == 1:
            return hits[0], "text"
    several = _several_letters(cand)
    if several:
        return ",".join(several), "several"
    m = _LEAD_LETTER_RE.match(_clean(cand))
    if m:
        return (m.group(1) or m.group(2) or m.group(3)).upper(), "letter"
    return None, "none"


def _candidates(final: str) -> list[tuple[str, bool]]:
    """Final-answer candidates, most authoritative first: ``(text, from_a_box)``."""
    out: list[tuple[str, bool]] = []
    boxed = extract_boxed(final)
    if boxed is not None:
        out.append((boxed, True))
    phrases = _ANSWER_RE.findall(final)
    if phrases:
        out.append((phrases[-1], False))
    lines = [ln for ln in final.strip().splitlines() if ln.strip()]
    if lines and _LAST_LINE_RE.match(lines[-1].strip()):
        out.append((lines[-1], False))
    return out


def extract_choice(response: str, choices: Sequence[str] | None = None) -> tuple[str | None, str]:
    """The chosen letter (or ``"A,C"`` for several) and how it was read, from a response's final answer.

    ``how`` is ``letter`` / ``text`` (an option's text matched) / ``several`` / ``other`` (a
    candidate that is no option) / ``none`` (no candidate at all).
    """
    final = response.rsplit(THINK_CLOSE, 1)[1] if THINK_CLOSE in response else response
    cands = _candidates(final)
    for cand, boxed in cands:
        got, how = _read_candidate(cand, choices, boxed)
        if got is not None:
            return got, how
    if cands:
        return _clean(cands[0][0])[:200] or None, "other"
    return None, "none"


def grade_choice(response: str, reference: str, choices: Sequence[str] | None = None,
                 require_think: bool = True) -> Any:
    """Grade one multiple-choice response; ``reference`` is the right letter. Never raises."""
    if require_think and THINK_CLOSE not in response:
        return Grade(False, None, "unclosed_think")
    ref = letter_of(reference, choices)
    got, how = extract_choice(response, choices)
    if got is None:
        return Grade(False, None, "no_answer")
    if how == "several":
        return Grade(False, got, "ambiguous")
    if how == "other" or ref is None:
        return Grade(False, got, "wrong")
    n = len(choices) if choices else len(LETTERS)
    ok = got == ref and LETTERS.index(got) < n
    return Grade(ok, got, "correct" if ok else "wrong")


def letter_of(reference: Any, choices: Sequence[str] | None = None) -> str | None:
    """The reference as a letter: ``"C"``, ``"(c)"``, an index ``2``, or an option's exact text."""
    if isinstance(reference, int) and not isinstance(reference, bool):
        return LETTERS[reference] if 0 <= reference < len(LETTERS) else None
    s = _clean(str(reference))
    if re.fullmatch(r"\(?[A-Ja-j]\)?", s):
        return s.strip("()").upper()
    if s.isdigit() and choices and int(s) < len(choices):
        return LETTERS[int(s)]
    if choices:
        hits = [LETTERS[i] for i, c in enumerate(choices) if _norm_text(str(c)) == _norm_text(s)]
        return hits[0] if len(hits) == 1 else None
    return None


def is_letter_reference(reference: Any) -> bool:
    return isinstance(reference, str) and re.fullmatch(r"\(?[A-J]\)?", reference.strip()) is not None


def choices_of(record: dict[str, Any]) -> list[str] | None:
    """A record's options, in the order shown to the model: ``choices`` at the top or in ``meta``."""
    for holder in (record, record.get("meta") if isinstance(record.get("meta"), dict) else None):
        if holder is None:
            continue
        val = holder.get("choices")
        if isinstance(val, list) and 2 <= len(val) <= len(LETTERS) and all(isinstance(c, (str, int, float)) for c in val):
            return [str(c) for c in val]
    return None


def format_options(choices: Sequence[str]) -> str:
    """``A) first\\nB) second ...``: how the options are shown under the question."""
    return "\n".join(f"{LETTERS[i]}) {str(c).strip()}" for i, c in enumerate(choices))
