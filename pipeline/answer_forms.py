"""Answer forms the grader settles without sympy: normal form, numbers, clock times, unit words.

Each comparison here is symmetric (``f(a, b) == f(b, a)``) so majority voting can group with it.

* **Normal form** (:func:`normalize_answer`): conservative, equal normal forms mean equal answers.
  ``\\dfrac``/``\\tfrac``/``\\cfrac`` -> ``\\frac``, no ``\\left``/``\\right``, spacing commands,
  ``\\text{}``-style wrappers, ``^\\circ``, ``\\%`` -> ``%``, LaTeX thousands separators (``1{,}000``,
  ``1,\\!000``), an escaping artifact (``\\\\frac`` written for ``\\frac``, a trailing ``\\``), a
  trailing period, trailing decimal zeros. ``1,234`` is a thousands number, ``32, 349`` (a space
  after the comma) is a list.
* **Numbers** (:func:`as_number`): integers, decimals, ``a/b``, ``\\frac{a}{b}``, scientific notation
  (``2.3 \\times 10^{-3}``, ``2.3e-3``) and mixed numbers (``1 1/2``, ``2\\frac{5}{8}``, proper
  fractions only) compare exactly as rationals. A decimal with at least ``MIN_SIG_DIGITS`` (6)
  significant digits also equals a fraction it rounds or truncates to: the stated tolerance is one
  unit in its last written digit (``2.314814814815 \\times 10^{-3}`` is 1/432; ``0.333`` is not 1/3).
  Two decimals always compare exactly.
* **Clock times** (:func:`as_clock`): ``20:34`` = ``20:34:00`` = ``8:34 PM``; ``8:34`` without AM/PM
  is 8:34. Minutes must have two digits, so ratios like ``3:4`` are never times.
* **Unit words** (:func:`strip_unit`): ``10 weeks``, ``10weeks``, ``10 \\text{ cm}^2``, ``10 square
  units``, ``17 \\text{ any text}`` equal a bare ``10`` / ``17``: one to three words of letters after
  a number. A unit is only dropped when the other side is a bare number; a short unit (``cm``,
  ``m``) needs a space before it, since ``10cm`` reads as the product 10*c*m (not 10).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["light_form", "normalize_answer", "as_number", "as_clock", "strip_unit", "cheap_verdict", "too_large",
           "MIN_SIG_DIGITS", "MAX_EXPONENT"]

MIN_SIG_DIGITS = 6
MAX_EXPONENT = 10_000  # larger integer exponents / factorials are refused before sympy (memory)

_TEXT_RE = re.compile(r"\\(?:text|textbf|textnormal|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SPACE_CMDS = re.compile(r"(?<!\\)\\[,;:! ]|\\q?quad|~")
_DOUBLE_BACKSLASH_CMD = re.compile(r"(?<!\\)\\\\(?=[A-Za-z])")


def light_form(ans: str) -> str:
    """The normal form with single spaces kept (mixed numbers and units need them)."""
    s = ans.strip().strip("$").strip()
    if "\\begin" not in s:
        s = _DOUBLE_BACKSLASH_CMD.sub(r"\\", s)
    s = re.sub(r"(?<=[\w}])\\+$", "", s)  # a stray trailing backslash
    s = re.sub(r"\s*\{\s*,\s*\}\s*", ",", s)
    s = re.sub(r",\\!\s*", ",", s)
    for f in ("\\dfrac", "\\tfrac", "\\cfrac"):
        s = s.replace(f, "\\frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = _SPACE_CMDS.sub(" ", s)
    s = _TEXT_RE.sub(r"\1", s)
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "%").replace("\\$", "")
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    return s


def normalize_answer(ans: str, light: str | None = None) -> str:
    """A conservative normal form: equal normal forms mean equal answers (never the converse).

    ``light`` is ``light_form(ans)`` when the caller has it already."""
    s = re.sub(r"\s+", "", light if light is not None else light_form(ans)).rstrip(".")
    if re.fullmatch(r"-?\d+\.\d*?0+", s):  # 2.50 -> 2.5, 3.0 -> 3
        s = s.rstrip("0").rstrip(".")
    return s


_DEC = r"-?(?:\d+\.?\d*|\.\d+)"
_FRAC = re.compile(r"^(-)?\\frac\s*(?:\{(\d+)\}|(\d))\s*(?:\{(\d+)\}|(\d))$")
_SCI = re.compile(rf"^({_DEC})\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{{?\s*(-?\d+)\s*\}}?$|^({_DEC})[eE](-?\d+)$")


def _sig_digits(dec: str) -> int:
    digits = re.sub(r"[^\d]", "", dec).lstrip("0")
    return len(digits)


def as_number(s: str) -> tuple[Fraction, int | None] | None:
    """``(value, significant digits)`` of a numeric answer in light form; digits None = exact."""
    s = s.strip()
    if len(s) > 60:
        return None
    if re.fullmatch(_DEC, s):
        return Fraction(s), (_sig_digits(s) if "." in s else None)
    m = _SCI.match(s)
    if m:
        mant, exp = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if abs(int(exp)) > 400:
            return None
        return Fraction(mant) * Fraction(10) ** int(exp), _sig_digits(mant)
    m = re.fullmatch(r"(-?)(\d+)\s*/\s*(\d+)", s)
    if m and int(m.group(3)):
        return Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1), None
    m = _FRAC.match(s)
    if m and int(m.group(4) or m.group(5)):
        return Fraction(int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))) * (-1 if m.group(1) else 1), None
    m = re.fullmatch(r"(-?)(\d+)(?:\s+(\d+)\s*/\s*(\d+)|\s*(\\frac.*))", s)  # mixed number
    if m:
        frac = Fraction(int(m.group(3)), int(m.group(4))) if m.group(3) and int(m.group(4)) else None
        if m.group(5):
            inner = as_number(m.group(5))
            frac = inner[0] if inner and inner[1] is None and inner[0] > 0 else None
        if frac is not None and 0 < frac < 1:
            return (int(m.group(2)) + frac) * (-1 if m.group(1) else 1), None
    return None


def _numbers_equal(a: tuple[Fraction, int | None], b: tuple[Fraction, int | None]) -> bool:
    if a[0] == b[0]:
        return True
    for dec, exact in ((a, b), (b, a)):
        if dec[1] is not None and dec[1] >= MIN_SIG_DIGITS and exact[1] is None and dec[0] != 0:
            exp = math.floor(math.log10(abs(float(dec[0]))))
            ulp = Fraction(10) ** (exp - dec[1] + 1)
            if abs(dec[0] - exact[0]) <= ulp:
                return True
    return False


_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?\s*(?:([ap])\.?\s*m\.?)?$", re.IGNORECASE)


def as_clock(s: str) -> int | None:
    """Seconds after midnight of a clock time (``20:34``, ``20:34:00``, ``8:34 PM``), or None."""
    m = _CLOCK.match(s.strip())
    if not m:
        return None
    h, mi, sec, half = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), (m.group(4) or "").lower()
    if mi > 59 or sec > 59 or h > 23 or (half and not 1 <= h <= 12):
        return None
    if half:
        h = h % 12 + (12 if half == "p" else 0)
    return h * 3600 + mi * 60 + sec


# A unit: 1-3 words of letters after a number. Attached to the number ("10weeks") only when the
# first word has 3+ letters; "10cm" / "10m" read as products, so a short unit needs a space.
_UNIT = re.compile(r"^(.*?\d)(?:\s+[A-Za-z]{2,}|[A-Za-z]{3,})(?:\s+[A-Za-z]{2,}){0,2}\.?(?:\s*\^\s*\{?[23]\}?)?$")
_ATTACHED_SHORT = re.compile(r"^-?\d+(?:\.\d+)?[A-Za-z]{1,2}$")


def strip_unit(s: str) -> str | None:
    """The number of ``<number> <unit word>`` in light form, or None when there is no unit."""
    m = _UNIT.match(s.strip())
    return m.group(1).strip() if m else None


def cheap_verdict(a: str, b: str) -> bool | None:
    """True/False when numbers, clock times or unit words settle ``a`` vs ``b`` (light forms); else None."""
    na, nb = as_number(a), as_number(b)
    if na is not None and nb is not None:
        return _numbers_equal(na, nb)
    ca, cb = as_clock(a), as_clock(b)
    if ca is not None and cb is not None:
        return ca == cb
    if (na is None) == (nb is None):
        return None
    num, other = (na, b) if na is not None else (nb, a)
    bare = strip_unit(other)
    unit_free = as_number(bare) if bare is not None else None
    if unit_free is None:
        return False if _ATTACHED_SHORT.match(other) else None  # 10cm = 10*c*m, not 10
    return _numbers_equal(num, unit_free)


_BIG_EXP = re.compile(r"\^\s*\{?\s*\(?\s*(\d{5,})|(\d{5,})\s*!")
_POWER_EXP = re.compile(r"\^\s*\{\s*(\d{1,6})\s*\^\s*\{?\s*(\d{1,6})\s*\}?\s*\}")  # an exponent written b^e


def too_large(ans: str) -> bool:
    """An answer whose exact value sympy could not hold (``(x+1)^{100000000}``, ``100000!``)."""
    if len(ans) > 2000:
        return True
    if any(int(a or b) > MAX_EXPONENT for a, b in _BIG_EXP.findall(ans)):
        return True
    return any(int(e) * math.log10(max(int(b), 1)) > math.log10(MAX_EXPONENT) for b, e in _POWER_EXP.findall(ans))
