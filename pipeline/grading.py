"""The one grader: final-answer extraction + math-verify. Callers: ``filters/answer.py`` and the eval stage.

Protocol (DeepSeek-R1 style):

1. Only the text after ``</think>`` is graded. A response without a closed think block is wrong
   (status ``unclosed_think``) when ``require_think`` is set: its "answer" is reasoning cut short.
2. The final answer is the content of the *last* ``\\boxed{...}`` (or ``\\fbox``), braces balanced;
   failing that, an explicit "the (final) answer is X" / "#### X" (GSM8K style). Nothing found ->
   ``no_answer``.
3. A cheap normal-form string comparison decides the easy cases (``\\dfrac`` vs ``\\frac``, spaces,
   ``\\text{}``, thousands separators, a trailing period, degrees); otherwise math-verify decides
   (fractions vs decimals, sets in any order, intervals, tuples, percentages, symbolic equality).
4. math-verify's own ``signal.alarm`` timeouts bound each parse/verify; a timeout counts as wrong
   with status ``timeout`` so one pathological answer cannot stall a run. Because of that alarm,
   parallel grading uses processes (:func:`grade_many`), never threads.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Grade", "extract_answer", "extract_boxed", "normalize_answer", "grade", "grade_many", "equivalent",
           "STATUSES"]

log = logging.getLogger(__name__)
STATUSES = ("correct", "wrong", "no_answer", "unclosed_think", "timeout", "error")
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class Grade:
    correct: bool
    extracted: str | None
    status: str  # one of STATUSES


# --------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS_RE = re.compile(
    r"(?:final answer|the answer)\s*(?:is|:|=)\s*:?\s*(.+?)(?:\.\s|\.$|\n|$)", re.IGNORECASE)
_HASH_RE = re.compile(r"####\s*([^\n]+)")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` with balanced braces, or None."""
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    for start in reversed(starts):
        depth = 1
        i = start
        while i < len(text):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    content = text[start:i].strip()
                    if content:
                        return content
                    break
            i += 1
    # ``\boxed 5`` (no braces) is rare but legal LaTeX.
    m = re.findall(r"\\boxed\s+([^\s$]+)", text)
    return m[-1] if m else None


def extract_answer(text: str) -> str | None:
    """The final answer of a response (text after ``</think>`` when present), or None."""
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    found = _ANSWER_IS_RE.findall(text)
    if found:
        ans = found[-1].strip().strip("$ ").rstrip(".").strip()
        return ans or None
    found = _HASH_RE.findall(text)
    if found:
        return found[-1].strip() or None
    return None


# --------------------------------------------------------------------------- normal form

_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SPACE_CMDS = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_INT_RE = re.compile(r"-?\d{1,4000}")  # a plain integer normal form (bounded: int() of a huge string is slow)


def normalize_answer(ans: str) -> str:
    """A conservative normal form: equal normal forms mean equal answers (never the converse)."""
    s = ans.strip().strip("$").strip().replace("{,}", ",")  # LaTeX thousands separator 1{,}000
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\left", "").replace("\\right", "")
    s = _SPACE_CMDS.sub("", s)
    s = _TEXT_RE.sub(r"\1", s)
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "%")
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d*?0+", s):  # 2.50 -> 2.5, 3.0 -> 3
        s = s.rstrip("0").rstrip(".")
    return s


# --------------------------------------------------------------------------- math-verify

def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _mv_equal(reference: str, answer: str, timeout_s: float) -> bool:
    """math-verify equality of two answers (each wrapped in ``\\boxed{}``); raises TimeoutException."""
    from math_verify import parse, verify

    t = max(1, int(round(timeout_s))) if _in_main_thread() else None  # signal.alarm is main-thread only
    gold = parse(f"\\boxed{{{_strip_thousands(reference)}}}", parsing_timeout=t, raise_on_error=True)
    if not gold:
        gold = parse(reference, parsing_timeout=t, raise_on_error=True)
    pred = parse(f"\\boxed{{{_strip_thousands(answer)}}}", parsing_timeout=t, raise_on_error=True)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=t, raise_on_error=True))


def _strip_thousands(ans: str) -> str:
    s = ans.strip().strip("$").strip().replace("{,}", ",")
    return s.replace(",", "") if _THOUSANDS_RE.match(s) else s


def equivalent(a: str, b: str, timeout_s: float = 5.0) -> bool:
    """Whether two extracted answers are the same (used for majority voting). Errors -> False."""
    na, nb = normalize_answer(a), normalize_answer(b)
    if na == nb:
        return True
    if _INT_RE.fullmatch(na) and _INT_RE.fullmatch(nb):
        return int(na) == int(nb)
    try:
        return _mv_equal(a, b, timeout_s)
    except Exception:
        return False
    except BaseException as exc:  # math_verify's TimeoutException derives from BaseException
        if type(exc).__name__ != "TimeoutException":
            raise
        return False


def grade(response: str, reference: str, timeout_s: float = 5.0, require_think: bool = True,
          choices: Sequence[str] | None = None) -> Grade:
    """Grade one response against a reference answer. Never raises.

    With ``choices`` (the options in the order shown) the question is multiple choice and the
    reference is a letter: :func:`pipeline.choices.grade_choice` decides.
    """
    if choices is not None:
        from pipeline.choices import grade_choice

        return grade_choice(response, reference, choices, require_think)
    if require_think and THINK_CLOSE not in response:
        return Grade(False, None, "unclosed_think")
    extracted = extract_answer(response)
    if extracted is None:
        return Grade(False, None, "no_answer")
    norm_pred, norm_ref = normalize_answer(extracted), normalize_answer(str(reference))
    if norm_pred == norm_ref:
        return Grade(True, extracted, "correct")
    if _INT_RE.fullmatch(norm_pred) and _INT_RE.fullmatch(norm_ref):
        # Two plain integers (most AIME/AMC/GSM8K/MATH answers): compare values, skip sympy (~20 ms).
        ok = int(norm_pred) == int(norm_ref)
        return Grade(ok, extracted, "correct" if ok else "wrong")
    try:
        ok = _mv_equal(str(reference), extracted, timeout_s)
    except Exception as exc:  # a parser bug
        log.debug("math-verify error on %r vs %r: %s", extracted, reference, exc)
        return Grade(False, extracted, "error")
    except BaseException as exc:  # math_verify's TimeoutException derives from BaseException
        if type(exc).__name__ != "TimeoutException":
            raise
        return Grade(False, extracted, "timeout")
    return Grade(ok, extracted, "correct" if ok else "wrong")


def _grade_star(args: tuple) -> Grade:
    return grade(*args)


def _quiet_worker() -> None:
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)


def grade_many(pairs: Sequence[tuple], workers: int = 1, timeout_s: float = 5.0,
               require_think: bool = True, chunksize: int = 64) -> list[Grade]:
    """Grade ``(response, reference)`` or ``(response, reference, choices)`` tuples, in order, over
    ``workers`` processes (1 = in-process)."""
    jobs = [(p[0], p[1], timeout_s, require_think, p[2] if len(p) > 2 else None) for p in pairs]
    if workers <= 1 or len(jobs) < 2 * chunksize:
        return [_grade_star(j) for j in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # fork keeps start-up cheap (math-verify and sympy already imported in the parent when used).
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_quiet_worker) as pool:
        return list(pool.map(_grade_star, jobs, chunksize=chunksize))
