"""Rule ``long_paragraph``: a paragraph longer than ``max_words`` words.

R1's cleaning dropped chains of thought with "long paragraphs": walls of text that are hard to
learn from. R1 writes one paragraph per line (``\\n\\n`` between them), so a paragraph here is a
line; a table of many short lines is many short paragraphs and passes. ``max_words`` = 300
(~400 tokens): in the shared MATH training sample (2,000 human solutions) the longest line of a
solution has median 42 words, p99 160, max 343 (``python benchmarks/filter_throughput.py
--calibrate``), so a line over 300 words is a wall of text, not a careful step.
"""

from __future__ import annotations

from pipeline.config import PositiveInt, Section

from filters.base import Parsed, Rule


class ParagraphConfig(Section):
    enabled: bool = True
    max_words: PositiveInt = 300


def longest_paragraph_words(text: str, max_words: int) -> int:
    """Words in the longest line, computing word counts only for lines that could exceed ``max_words``."""
    best = 0
    floor = max_words  # a line of > max_words words has > max_words chars
    for line in text.split("\n"):
        if len(line) > floor:
            n = len(line.split())
            if n > best:
                best = n
    return best


class ParagraphRule(Rule):
    key, reason, Config = "paragraphs", "long_paragraph", ParagraphConfig

    def __init__(self, cfg: ParagraphConfig):
        self.max_words = cfg.max_words

    def check(self, p: Parsed) -> str | None:
        n = longest_paragraph_words(p.body, self.max_words)
        if n > self.max_words:
            return f"a paragraph of {n} words > {self.max_words}"
        return None
