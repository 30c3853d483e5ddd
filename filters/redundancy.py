"""Rule 4, ``redundancy``: repetition beyond what careful reasoning needs.

R1 traces legitimately repeat short moves ("Wait,", "Let me double-check.") and tabulate values on
many short, similar lines, so every measure here ignores short units and is a *fraction* with a
threshold, never "any repeat". Measured on the reasoning + answer text:

* ``dup_ngram_frac``: share of word ``ngram_n``-gram positions (n = 10) whose n-gram occurs more
  than once. Long verbatim copies and loops push it up; a 10-gram spans more than one short
  tabulated line, so "n = 3: 10" style tables stay unique. Threshold 0.40: in a clean trace a
  repeated 10-gram is a re-stated conclusion (a few %), a trace that pastes back half of itself
  sits near 0.5, a loop near 1.0.
* ``repeated_line_frac``: share of characters in lines of >= ``min_line_words`` (8) words that
  repeat an earlier line after normalisation (case, whitespace, punctuation and ``$``/``\\(``
  delimiters dropped, so reformatted copies count). R1 writes one paragraph per line, so this is
  the repeated-paragraph measure. Threshold 0.10: one pasted-back paragraph in a 5-paragraph
  trace is ~0.2; in a 60-paragraph R1 trace a single restated paragraph is ~0.02.
* ``repeated_sentence_frac``: share of sentences of >= ``min_sentence_words`` (6) words that are
  exact (normalised) repeats of an earlier one. Threshold 0.30 (short "Wait, let me check."
  sentences are below 6 words and never count).
* ``tail_loop``: the last ``loop_window`` (600) characters of the reasoning or of the answer are
  periodic with a period <= ``max_loop_period`` (200) chars, i.e. >= 3 back-to-back copies of the
  same text: the classic degenerate-decoding loop.
* ``compression_ratio``: ``len(zlib(text)) / len(text)`` for texts of >= 2,000 bytes; below 0.15
  means mostly repeated content (English prose is ~0.35-0.45, a LaTeX-heavy trace ~0.3, a long
  table of short lines ~0.2, a loop ~0.02-0.1).
"""

from __future__ import annotations

import re
import zlib
from collections import Counter

from pipeline.config import Section

from filters.base import Parsed, Rule

__all__ = ["RedundancyConfig", "RedundancyRule", "measure"]


class RedundancyConfig(Section):
    enabled: bool = True
    ngram_n: int = 10
    max_dup_ngram_frac: float = 0.40
    min_line_words: int = 8
    max_repeated_line_frac: float = 0.10
    min_sentence_words: int = 6
    max_repeated_sentence_frac: float = 0.30
    loop_window: int = 600
    max_loop_period: int = 200
    min_compression_ratio: float = 0.15
    min_bytes_for_compression: int = 2000


_NORM_DROP = re.compile(r"[\W_]+", re.UNICODE)  # punctuation, whitespace, $ and \ delimiters
_SENT_SPLIT = re.compile(r"(?<=[.!?。！？])\s+|\n+")


def _norm(s: str) -> str:
    return _NORM_DROP.sub("", s.lower())


def dup_ngram_frac(words: list[str], n: int) -> float:
    total = len(words) - n + 1
    if total < 2:
        return 0.0
    if n == 1:
        grams = words
    else:
        # one string per n-gram (joined once) hashes faster than an n-tuple
        grams = [" ".join(words[i:i + n]) for i in range(total)]
    counts = Counter(grams)
    if len(counts) == total:
        return 0.0
    return sum(c for c in counts.values() if c > 1) / total


def repeated_frac(units: list[str], min_words: int, by_chars: bool) -> float:
    seen: set[str] = set()
    total = rep = 0
    for u in units:
        if u.count(" ") + 1 < min_words or len(u.split()) < min_words:
            continue
        key = _norm(u)
        w = len(u) if by_chars else 1
        total += w
        if key in seen:
            rep += w
        else:
            seen.add(key)
    return rep / total if total else 0.0


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


def measure(text: str, cfg: RedundancyConfig) -> dict[str, float]:
    """All redundancy measures of one text (for reports and threshold studies)."""
    words = text.split()
    lines = text.split("\n")
    sentences = _SENT_SPLIT.split(text)
    raw = text.encode("utf-8")
    return {
        "dup_ngram_frac": dup_ngram_frac(words, cfg.ngram_n),
        "repeated_line_frac": repeated_frac(lines, cfg.min_line_words, by_chars=True),
        "repeated_sentence_frac": repeated_frac(sentences, cfg.min_sentence_words, by_chars=False),
        "compression_ratio": len(zlib.compress(raw, 6)) / len(raw) if raw else 1.0,
    }


class RedundancyRule(Rule):
    name = "redundancy"

    def __init__(self, cfg: RedundancyConfig):
        self.cfg = cfg

    def check(self, p: Parsed) -> str | None:
        c = self.cfg
        text = p.body
        for part, t in (("reasoning", p.reasoning_text), ("answer", p.answer)):
            period = tail_period(t, c.loop_window, c.max_loop_period)
            if period is not None:
                return f"{part} ends in a loop (period {period} chars)"
        raw = text.encode("utf-8")
        if len(raw) >= c.min_bytes_for_compression:
            ratio = len(zlib.compress(raw, 6)) / len(raw)
            if ratio < c.min_compression_ratio:
                return f"compression ratio {ratio:.3f} < {c.min_compression_ratio}"
        f = repeated_frac(text.split("\n"), c.min_line_words, by_chars=True)
        if f > c.max_repeated_line_frac:
            return f"repeated paragraph share {f:.2f} > {c.max_repeated_line_frac}"
        f = repeated_frac(_SENT_SPLIT.split(text), c.min_sentence_words, by_chars=False)
        if f > c.max_repeated_sentence_frac:
            return f"repeated sentence share {f:.2f} > {c.max_repeated_sentence_frac}"
        f = dup_ngram_frac(text.split(), c.ngram_n)
        if f > c.max_dup_ngram_frac:
            return f"duplicated {c.ngram_n}-gram share {f:.2f} > {c.max_dup_ngram_frac}"
        return None
