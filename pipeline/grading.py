"""The one grader: final-answer extraction + equality. Callers: ``filters/answer.py`` and the eval stage.

Protocol (DeepSeek-R1 style):

1. Only the text after ``</think>`` is graded. A response without a closed think block is wrong
   (status ``unclosed_think``) when ``require_think`` is set: its "answer" is reasoning cut short.
2. Extraction (:mod:`pipeline.answer_extract`): the last run of ``\\boxed{}`` (boxes separated only
   by connectors such as "and" form one answer; a box after other words corrects the earlier ones),
   unless a "final answer is X" statement follows the boxes; without a box, the last "the (final)
   answer is X" / "Answer $X$" / "#### X". Nothing found -> ``no_answer``.
3. Equality, cheapest first: the normal form and integer values; numbers (mixed numbers, scientific
   notation vs fractions within one unit of the last written digit, at least 6 significant digits),
   clock times, unit words against a bare number (:mod:`pipeline.answer_forms`); then math-verify
   (sets, intervals, tuples, matrices, relations, symbolic equality) and, when it says no, a numeric
   identity test at fixed points (trig identities, ``i``, float exponents; :func:`_sympy_identity`).
   :func:`equivalent` (majority voting) is symmetric: it accepts when either direction does.
4. Bounded work: math-verify's ``signal.alarm`` timeouts bound each parse/verify (a timeout is wrong,
   status ``timeout``); answers sympy could not hold (an exponent or factorial above 10,000, more than
   2,000 characters) are refused before sympy with status ``timeout``; :func:`grade_many` caps each
   worker's address space (``worker_memory_mb``), so a runaway answer ends as ``error`` in one worker.
   Because of the alarm, parallel grading uses processes, never threads.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence

from pipeline.answer_extract import THINK_CLOSE, extract_answer, extract_boxed
from pipeline.answer_forms import _THOUSANDS_RE, cheap_verdict, light_form, normalize_answer, too_large
from pipeline.verdict import STATUSES, Grade

__all__ = ["Grade", "extract_answer", "extract_boxed", "normalize_answer", "grade", "grade_many", "equivalent",
           "warm_up", "limit_worker_memory", "STATUSES"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- equality

_INT_RE = re.compile(r"-?\d{1,4000}")  # a plain integer normal form (bounded: int() of a huge string is slow)
_TRIG = re.compile(r"\\(?:sin|cos|tan|sec|csc|cot)")
_DEGREES = re.compile(r"(\d+(?:\.\d+)?)\s*\^\s*\{?\\circ\}?")
_PROBE_POINTS = (0.7316, 1.2941, 0.5873)  # fixed points for the numeric identity test
_REL_TOL = 1e-9
_MAX_IDENTITY_OPS = 120  # larger expressions are not probed (evalf time stays in the milliseconds)
DEFAULT_WORKER_MEMORY_MB = 2048


class _TooLarge(Exception):
    """An answer refused before sympy (see :func:`pipeline.answer_forms.too_large`)."""


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _prepare(ans: str) -> str:
    """Text handed to math-verify: thousands separators out, escaping artifacts fixed, degrees in trig."""
    if _TRIG.search(ans):
        ans = _DEGREES.sub(r"\\frac{\1\\pi}{180}", ans)
    s = light_form(ans)
    return s.replace(",", "") if _THOUSANDS_RE.match(s) else s


def _mv_equal(reference: str, answer: str, timeout_s: float) -> bool:
    """math-verify equality of two answers (each wrapped in ``\\boxed{}``); raises TimeoutException."""
    from math_verify import parse, verify

    t = max(1, int(round(timeout_s))) if _in_main_thread() else None  # signal.alarm is main-thread only
    gold = parse(f"\\boxed{{{_prepare(reference)}}}", parsing_timeout=t, raise_on_error=True)
    if not gold:
        gold = parse(reference, parsing_timeout=t, raise_on_error=True)
    pred = parse(f"\\boxed{{{_prepare(answer)}}}", parsing_timeout=t, raise_on_error=True)
    if not gold or not pred:
        return False
    # allow_set_relation_comp: "x \in [a, b]" vs "a <= x <= b" must pass in both directions (cons@k).
    if verify(gold, pred, timeout_seconds=t, raise_on_error=True, allow_set_relation_comp=True):
        return True
    return _sympy_identity(gold[0], pred[0])


def _as_function_value(e):
    """``rhs`` of ``y = rhs`` / ``f(x) = rhs`` (a name being defined), else ``e``."""
    import sympy

    if isinstance(e, sympy.Eq) and (isinstance(e.lhs, sympy.Symbol) or
                                    isinstance(e.lhs, sympy.core.function.AppliedUndef)):
        return e.rhs
    return e


def _sympy_identity(a, b) -> bool:
    """Equal as functions: same free symbols and equal values at fixed probe points (rel. 1e-9).

    Settles what ``simplify`` misses: trig identities (``\\sec x`` vs ``1/\\cos x``), float exponents,
    ``i`` written for the imaginary unit (when it is the only symbol on both sides), and
    ``f(x) = 2x+3`` vs ``y = 2x+3``. Sets, intervals, matrices and relations are left to math-verify.
    """
    import sympy

    a, b = _as_function_value(a), _as_function_value(b)
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    syms = a.free_symbols | b.free_symbols
    if syms and {str(s) for s in syms} == {"i"}:
        imaginary = {s: sympy.I for s in syms}
        a, b, syms = a.subs(imaginary), b.subs(imaginary), set()
    if a.free_symbols != b.free_symbols or len(syms) > 3 or a.has(sympy.core.function.AppliedUndef):
        return False
    if sympy.count_ops(a) + sympy.count_ops(b) > _MAX_IDENTITY_OPS:
        return False
    ordered = sorted(syms, key=str)
    for k in range(len(_PROBE_POINTS) if ordered else 1):
        point = {s: _PROBE_POINTS[(k + j) % len(_PROBE_POINTS)] for j, s in enumerate(ordered)}
        va, vb = complex(a.evalf(20, subs=point)), complex(b.evalf(20, subs=point))
        if abs(va - vb) > _REL_TOL * max(1.0, abs(va), abs(vb)):
            return False
    return True


def _equal(reference: str, answer: str, timeout_s: float) -> bool:
    """One equality decision: normal form, numbers/clock/units, then math-verify (may raise)."""
    la, lb = light_form(reference), light_form(answer)
    na, nb = normalize_answer(reference, la), normalize_answer(answer, lb)
    if na == nb:
        return True
    if _INT_RE.fullmatch(na) and _INT_RE.fullmatch(nb):
        return int(na) == int(nb)  # two plain integers (most AIME/AMC/GSM8K answers): skip sympy (~20 ms)
    verdict = cheap_verdict(la, lb)
    if verdict is not None:
        return verdict
    if too_large(reference) or too_large(answer):
        raise _TooLarge(answer[:80])
    return _mv_equal(reference, answer, timeout_s)


def _settle(reference: str, answer: str, timeout_s: float, symmetric: bool) -> str:
    """``correct``/``wrong``/``timeout``/``error`` for two extracted answers. Never raises."""
    try:
        ok = _equal(reference, answer, timeout_s) or (symmetric and _equal(answer, reference, timeout_s))
    except _TooLarge:
        return "timeout"
    except MemoryError:
        return "error"
    except Exception as exc:  # a parser bug
        log.debug("math-verify error on %r vs %r: %s", answer, reference, exc)
        return "error"
    except BaseException as exc:  # math_verify's TimeoutException derives from BaseException
        if type(exc).__name__ != "TimeoutException":
            raise
        return "timeout"
    return "correct" if ok else "wrong"


def equivalent(a: str, b: str, timeout_s: float = 5.0) -> bool:
    """Whether two extracted answers are the same (majority voting). Symmetric; errors -> False."""
    return _settle(a, b, timeout_s, symmetric=True) == "correct"


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
    status = _settle(str(reference), extracted, timeout_s, symmetric=False)
    return Grade(status == "correct", extracted, status)


def warm_up(timeout_s: float = 30.0) -> None:
    """Load math-verify, sympy and the LaTeX grammar now (~1.5 s) rather than on the first real answer.

    A pair the fast paths cannot settle, so it really reaches math-verify (``1`` vs ``2`` would not).
    """
    grade(f"{THINK_CLOSE} \\boxed{{x^2}}", "x \\cdot x", timeout_s=max(timeout_s, 30.0), require_think=False)


def _grade_star(args: tuple) -> Grade:
    return grade(*args)


def limit_worker_memory(extra_mb: int) -> None:
    """Cap this process's address space (RLIMIT_AS) at its current size plus ``extra_mb``.

    For grading worker processes: an answer that makes sympy allocate without bound then fails with
    ``MemoryError`` in that worker (graded ``error``, i.e. wrong) instead of taking the machine down.
    Never call it in a process that does anything else.
    """
    import resource

    vm_kb = 0
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            vm_kb = next((int(line.split()[1]) for line in f if line.startswith("VmSize:")), 0)
    except OSError:
        return  # not Linux: no cap
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm_kb * 1024 + extra_mb * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _init_worker(memory_mb: int | None) -> None:
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    if memory_mb:
        limit_worker_memory(memory_mb)


def grade_many(pairs: Sequence[tuple], workers: int = 1, timeout_s: float = 5.0,
               require_think: bool = True, chunksize: int = 64,
               worker_memory_mb: int | None = DEFAULT_WORKER_MEMORY_MB) -> list[Grade]:
    """Grade ``(response, reference)`` or ``(response, reference, choices)`` tuples, in order, over
    ``workers`` processes (1 = in-process). Each worker's address space is capped at its size after
    the fork plus ``worker_memory_mb`` (None: no cap)."""
    jobs = [(p[0], p[1], timeout_s, require_think, p[2] if len(p) > 2 else None) for p in pairs]
    if workers <= 1 or len(jobs) < 2 * chunksize:
        return [_grade_star(j) for j in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # fork keeps start-up cheap (math-verify and sympy already imported in the parent when used).
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(worker_memory_mb,)) as pool:
        return list(pool.map(_grade_star, jobs, chunksize=chunksize))
