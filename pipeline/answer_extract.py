"""Final-answer extraction for the grader (:mod:`pipeline.grading`).

The rule, in order (only the text after ``</think>`` is read when there is one):

1. **Boxes.** The answer is the last ``\\boxed{...}``/``\\fbox{...}`` (braces balanced). Several
   boxes *in a row* are one answer: when boxes are separated only by connectors (spaces, ``$``,
   commas, "and"/"or", ``\\quad``, ``\\text{and}``, ``x =``-style names), as in ``\\boxed{-2} and
   \\boxed{1}`` or ``x=\\boxed{1}, y=\\boxed{2}``, their contents are joined with ", " (repeats of
   one content count once). A box separated from an earlier one by any other words ("... but
   correcting that: \\boxed{5}") starts a new run, so a later correcting box still wins.
2. **A final-answer statement after the last box wins over it**: "Final Answer: The final answer
   is $X$." written after the boxes (models trained on Minerva-style prompts box intermediate
   values and state the answer last). Only statements naming the *final* answer count here, and
   only when what they state is a bare math answer: "the final answer is consistent with ..." or
   "... is 12 because 3 x 4 = 12" never overrides a box.
3. **No box**: the last statement "final answer is X", "the answer is X", "Final Answer: ...",
   "Answer $X$" / "Answer \\[X\\]" or GSM8K's "#### X". Inside "Final Answer: The final answer is
   X" the innermost marker is used. A sentence such as "The volume of $V$ is 120" keeps what follows
   its last "is"; a sentence with a single number ("Jane started 3 hours ago") gives that number.
"""

from __future__ import annotations

import re

from pipeline.chat import THINK_CLOSE

__all__ = ["extract_boxed", "extract_answer", "box_runs", "THINK_CLOSE"]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BARE_BOX_RE = re.compile(r"\\boxed\s+([^\s${}]+)")
# Text allowed between two boxes of one answer: blanks, math delimiters, separators, "and"/"or",
# spacing commands and a variable name being assigned (``x =``, ``y_1 =``).
_CONNECTOR = re.compile(r"(?:\s|\$|\\[()\[\]]|[,;&]|\\\\|\\[,;:! ]|\\q?quad|\\text\s*\{\s*(?:and|or|,)?\s*\}|\band\b|\bor\b"
                        r"|[A-Za-z](?:_\{?\w+\}?)?\s*=)*", re.IGNORECASE)
_MARKER = re.compile(r"(final answer|(?:the\s+)?answer)\s*(?:is|:|=)\s*:?|\banswer\s*:?\s*(?=\\\[|\$|\\\()|####", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.\s|\.$|\n|<\|", re.MULTILINE)
_MATH_SPAN = re.compile(r"^\s*(?:\$\$(.+?)\$\$|\$(.+?)(?<!\\)\$|\\\[(.+?)\\\]|\\\((.+?)\\\))", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _box_spans(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, content)`` of every ``\\boxed{}`` with balanced braces, in order."""
    spans: list[tuple[int, int, str]] = []
    outer_end = -1  # a box starting before the end of the previous outer box is nested in it
    for m in _BOX_RE.finditer(text):
        if m.start() < outer_end:
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            spans.append((m.start(), i, text[m.end():i - 1].strip()))
            outer_end = i
    return spans


def box_runs(text: str) -> list[tuple[int, int, list[str]]]:
    """Boxes grouped into runs separated only by connectors: ``(start, end, contents)`` each."""
    runs: list[tuple[int, int, list[str]]] = []
    for start, end, content in _box_spans(text):
        if not content:
            continue
        if runs and _CONNECTOR.fullmatch(text[runs[-1][1]:start]):
            runs[-1] = (runs[-1][0], end, runs[-1][2] + [content])
        else:
            runs.append((start, end, [content]))
    return runs


def extract_boxed(text: str) -> str | None:
    """The answer held by the last run of boxes (see the module rule), or None."""
    runs = box_runs(text)
    if runs:
        contents = list(dict.fromkeys(runs[-1][2]))
        return ", ".join(contents)
    m = _BARE_BOX_RE.findall(text)  # ``\boxed 5`` (no braces) is rare but legal LaTeX
    return m[-1] if m else None


def _clean_statement(ans: str) -> str | None:
    """The answer inside a final-answer sentence."""
    m = _MATH_SPAN.match(ans)
    if m and not ans[m.end():].strip(" .,;:\"'\\"):
        ans = next(g for g in m.groups() if g is not None)
    ans = re.sub(r"^(?:\\?[\"'])+|(?:\\?[\"'])+$", "", ans.strip()).strip()
    ans = re.sub(r"^(?:\\\(|\\\[)\s*|\s*(?:\\\)|\\\])$", "", ans)
    ans = re.sub(r"(?<!\\)\$", "", ans).strip().rstrip(".").strip()
    if re.search(r"[A-Za-z]{3,}", re.sub(r"\\[A-Za-z]+|\{[^{}]*\}", "", ans)):  # a sentence, not a bare answer
        tail = re.split(r"\s(?:is|are|equals|was)\s", ans)
        if len(tail) > 1:
            return _clean_statement(tail[-1])
        nums = _NUMBER.findall(re.sub(r"\$[^$]*\$", " ", ans))
        if len(nums) == 1:
            return nums[0]
    return ans or None


def _last_statement(text: str, final_only: bool = False) -> tuple[int, str] | None:
    """``(position, answer)`` of the last answer statement, or None."""
    last = None
    for m in _MARKER.finditer(text):
        if final_only and not (m.group(1) or "").lower().startswith("final"):
            continue
        last = m
    if last is None:
        return None
    rest = text[last.end():]
    span = _MATH_SPAN.match(rest)
    if span:
        body = span.group(0)
    else:
        e = _SENTENCE_END.search(rest)
        body = rest[:e.start()] if e else rest
    ans = _clean_statement(body)
    return (last.start(), ans) if ans else None


def _bare_answer(ans: str) -> bool:
    """A math answer, not a sentence: no word of 3+ letters outside LaTeX commands and ``\\text{}``."""
    math_only = re.sub(r"\\[A-Za-z]+(?:\s*\{[^{}]*\})?", " ", ans)
    return not re.search(r"[A-Za-z]{3,}", math_only)


def extract_answer(text: str) -> str | None:
    """The final answer of a response (text after ``</think>`` when present), or None."""
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    runs = box_runs(text)
    if runs:
        stated = _last_statement(text[runs[-1][1]:], final_only=True)
        if stated and _bare_answer(stated[1]):
            return stated[1]
        return extract_boxed(text)
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    stated = _last_statement(text)
    return stated[1] if stated else None
