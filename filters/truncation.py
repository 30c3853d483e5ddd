"""Rule ``truncated``: the generation hit its token limit, or never closed its think block.

A trace cut by ``max_tokens`` (``finish_reason == "length"``) has no trustworthy final answer even
when one seems present, and an unclosed ``<think>`` means the reasoning never ended. Both teach the
student to ramble, so both go.
"""

from __future__ import annotations

from pipeline.config import Section

from filters.base import Parsed, Rule


class TruncationConfig(Section):
    enabled: bool = True


class TruncationRule(Rule):
    key, reason, Config = "truncation", "truncated", TruncationConfig

    def check(self, p: Parsed) -> str | None:
        if p.finish_reason == "length":
            return "finish_reason == 'length'"
        if p.n_open > p.n_close:
            return "unclosed <think> block"
        return None
