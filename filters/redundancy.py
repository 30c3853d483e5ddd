"""Rule ``redundancy``: repetition beyond what careful reasoning needs.

R1 traces legitimately repeat short moves ("Wait,", "Let me double-check.") and tabulate values on
many short, similar lines, so every measure here ignores short units and is a *fraction* with a
threshold, never "any repeat". The answer section is R1's summary of the reasoning and often
restates the problem, so the repeat measures count a unit as repeated only when an earlier copy is
in the *same* part (reasoning, or answer), and the prompt's own lines (>= 30 characters) are taken
out of both parts first: "**Problem:** <the problem>" in the answer is not redundancy, a paragraph
pasted back inside the reasoning still is. Loops and compression are measured as before:

* ``dup_ngram_frac``: share of word ``ngram_n``-gram positions (n = 10) whose n-gram occurs more
  than once (computed with a vectorised rolling hash over word hashes). Long verbatim copies and loops push it up; a 10-gram spans more than one short
  tabulated line, so "n = 3: 10" style tables stay unique. Threshold 0.40: in a clean trace a
  repeated 10-gram is a re-stated conclusion (a few %), a trace that pastes back half of itself
  sits near 0.5, a loop near 1.0.
* ``repeated_line_frac``: share of characters in lines of >= ``min_line_chars`` (40 normalised
  characters, about 8 words) that repeat an earlier line after normalisation (case, whitespace
  and ASCII punctuation, including ``$`` and ``\\`` delimiters, dropped, so reformatted copies
  count). R1 writes one paragraph per line, so this is
  the repeated-paragraph measure. Threshold 0.10: one pasted-back paragraph in a 5-paragraph
  trace is ~0.2; in a 60-paragraph R1 trace a single restated paragraph is ~0.02.
* ``repeated_sentence_frac``: share of sentences of >= ``min_sentence_chars`` (30 normalised
  characters, about 6 words) that are (normalised) repeats of an earlier one. Threshold 0.30
  (short "Wait, let me check." sentences are below the floor and never count); one repeated
  sentence alone never counts (a short trace that re-quotes its one key sentence while
  double-checking is 1 of 2-3 sentences, far above 0.30, and not degenerate).
* ``tail_loop``: the last ``loop_window`` (600) characters of the reasoning or of the answer are
  periodic with a period <= ``max_loop_period`` (200) chars, i.e. >= 3 back-to-back copies of the
  same text: the classic degenerate-decoding loop.
* ``compression_ratio``: ``len(zlib(text, level 1)) / len(text)`` for texts of >= 2,000 bytes; below 0.15
  means mostly repeated content (2,000 human MATH solutions: min 0.23, median 0.52; long prose
  is ~0.35-0.45, a LaTeX-heavy trace ~0.3, a long
  table of short lines ~0.2, a loop ~0.02-0.1).
"""

from __future__ import annotations

import string
import zlib

from pipeline.config import Fraction, NonNegativeInt, PositiveInt, Section

from filters.base import Parsed, Rule

__all__ = ["RedundancyConfig", "RedundancyRule", "measure", "without_prompt"]


class RedundancyConfig(Section):
    enabled: bool = True
    ngram_n: PositiveInt = 10
    max_dup_ngram_frac: Fraction = 0.40
    min_line_chars: NonNegativeInt = 40
    max_repeated_line_frac: Fraction = 0.10
    min_sentence_chars: NonNegativeInt = 30
    max_repeated_sentence_frac: Fraction = 0.30
    loop_window: PositiveInt = 600
    max_loop_period: PositiveInt = 200
    min_compression_ratio: Fraction = 0.15
    min_bytes_for_compression: NonNegativeInt = 2000


# Normalisation on bytes (C-speed): drop ASCII punctuation and blanks, keep newlines as separators.
_DROP = (string.punctuation + " \t\r\x0b\x0c").encode()


def normalized_units(text: str, sentences: bool) -> list[bytes]:
    """Lines (or sentences) of ``text``, lowercased, without ASCII punctuation and blanks."""
    low = text.lower()
    if sentences:
        for end in (". ", "? ", "! ", "\u3002", "\uff1f", "\uff01"):
            if end in low:
                low = low.replace(end, end + "\n")
    return low.encode("utf-8", "replace").translate(None, _DROP).split(b"\n")


def repeated_frac(units: list[bytes] | list[list[bytes]], min_chars: int, by_chars: bool, min_repeats: int = 1) -> float:
    """Share (by characters or by count) of units of >= ``min_chars`` that repeat an earlier unit.

    Given a list of parts (lists of units), a unit only counts as a repeat of an earlier unit of
    its own part; the share is over all parts. Fewer than ``min_repeats`` repeats give 0.
    """
    parts = units if units and isinstance(units[0], list) else [units]
    total = rep = n_rep = 0
    for part in parts:
        seen: set[bytes] = set()
        for u in part:
            n = len(u)
            if n < min_chars:
                continue
            w = n if by_chars else 1
            total += w
            if u in seen:
                rep += w
                n_rep += 1
            else:
                seen.add(u)
    return rep / total if total and n_rep >= min_repeats else 0.0


def _dup_ngram_counts(words: list[str], n: int) -> tuple[int, int]:
    """``(positions whose word n-gram occurs more than once, n-gram positions)`` (rolling hash, numpy)."""
    import numpy as np

    total = len(words) - n + 1
    if total < 2:
        return 0, max(total, 0)
    h = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
    acc = np.zeros(total, dtype=np.uint64)
    mult = np.uint64(1099511628211)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc = acc * mult + h[j:j + total]
    _, counts = np.unique(acc, return_counts=True)
    if len(counts) == total:
        return 0, total
    return int(counts[counts > 1].sum()), total


def dup_ngram_frac(words: list[str] | list[list[str]], n: int) -> float:
    """Share of word n-gram positions whose n-gram occurs more than once (within its own part)."""
    parts = words if words and isinstance(words[0], list) else [words]
    dup = total = 0
    for part in parts:
        d, t = _dup_ngram_counts(part, n)
        dup, total = dup + d, total + t
    return dup / total if total else 0.0


def without_prompt(text: str, prompt: str, min_chars: int = 30) -> str:
    """``text`` without the first copy of each prompt line of >= ``min_chars`` characters (a restated problem)."""
    for line in prompt.split("\n"):
        line = line.strip()
        if len(line) >= min_chars and line in text:
            text = text.replace(line, " ", 1)
    return text


def tail_period(text: str, window: int, max_period: int) -> int | None:
    """The smallest period p <= max_period of the last ``window`` chars (>= 3 copies), or None."""
    tail = text.rstrip()[-window:]
    if len(tail) < window:
        return None
    limit = min(max_period, window // 3)
    for p in range(1, limit + 1):
        if tail[p:] == tail[:-p]:
            return p
    return None


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8", "replace")
    return len(zlib.compress(raw, 1)) / len(raw) if raw else 1.0


def measure(text: str, cfg: RedundancyConfig) -> dict[str, float]:
    """All redundancy measures of one text (for reports and threshold studies)."""
    return {
        "dup_ngram_frac": dup_ngram_frac(text.split(), cfg.ngram_n),
        "repeated_line_frac": repeated_frac(normalized_units(text, False), cfg.min_line_chars, by_chars=True),
        "repeated_sentence_frac": repeated_frac(normalized_units(text, True), cfg.min_sentence_chars, by_chars=False),
        "compression_ratio": compression_ratio(text),
    }


class RedundancyRule(Rule):
    key, reason, Config, style = "redundancy", "redundancy", RedundancyConfig, True
    cfg: RedundancyConfig

    def check(self, p: Parsed) -> str | None:
        c = self.cfg
        text = p.body
        for part, t in (("reasoning", p.reasoning_text), ("answer", p.answer)):
            period = tail_period(t, c.loop_window, c.max_loop_period)
            if period is not None:
                return f"{part} ends in a loop (period {period} chars)"
        if len(text) >= c.min_bytes_for_compression // 3:
            ratio = compression_ratio(text)
            if ratio < c.min_compression_ratio and len(text.encode("utf-8", "replace")) >= c.min_bytes_for_compression:
                return f"compression ratio {ratio:.3f} < {c.min_compression_ratio}"
        parts = [without_prompt(t, p.prompt) for t in (p.reasoning_text, p.answer)]
        f = repeated_frac([normalized_units(t, False) for t in parts], c.min_line_chars, by_chars=True)
        if f > c.max_repeated_line_frac:
            return f"repeated paragraph share {f:.2f} > {c.max_repeated_line_frac}"
        f = repeated_frac([normalized_units(t, True) for t in parts], c.min_sentence_chars, by_chars=False, min_repeats=2)
        if f > c.max_repeated_sentence_frac:
            return f"repeated sentence share {f:.2f} > {c.max_repeated_sentence_frac}"
        f = dup_ngram_frac([t.split() for t in parts], c.ngram_n)
        if f > c.max_dup_ngram_frac:
            return f"duplicated {c.ngram_n}-gram share {f:.2f} > {c.max_dup_ngram_frac}"
        return None
