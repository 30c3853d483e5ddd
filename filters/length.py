"""Rule ``length``: a trace too short to teach anything or too long to train on.

Completion length comes, in order of preference, from the record's ``num_tokens.completion`` (what
the generator counted), the teacher tokenizer (``tokenizer``: a local path or hub id, loaded once per
worker), or :func:`filters.base.estimate_tokens`. The reasoning length uses the tokenizer or the
estimate.

Defaults: ``min_reasoning_tokens`` 5 (an empty or one-phrase "reasoning" is a format failure in
disguise; short demo traces of ~100 tokens must pass), ``max_completion_tokens`` 32768 (R1's
generation limit; longer traces do not fit a 32K SFT context). Raise ``min_completion_tokens`` for
R1-scale corpora if you want to drop trivially short answers. ``kind: non_reasoning`` records
(an empty think block by design) have their own completion limits (``non_reasoning``: 1 to 4096
tokens) and no reasoning minimum.
"""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from pipeline.config import NonNegativeInt, PositiveInt, Section

from filters.base import Parsed, Rule, estimate_tokens


class NonReasoningLength(Section):
    """Limits for ``kind: non_reasoning`` records (writing, factual QA, translation, self-cognition):
    a direct answer is short, so one over ``max_completion_tokens`` (4096) is a disguised reasoning
    trace or a loop; one under ``min_completion_tokens`` (1) is empty. No reasoning minimum."""

    min_completion_tokens: NonNegativeInt = 1
    max_completion_tokens: PositiveInt = 4096


class LengthConfig(Section):
    enabled: bool = True
    min_reasoning_tokens: NonNegativeInt = 5
    min_completion_tokens: NonNegativeInt = 0
    max_completion_tokens: PositiveInt = 32768
    tokenizer: str | None = None
    non_reasoning: NonReasoningLength = NonReasoningLength()

    @model_validator(mode="after")
    def _min_below_max(self) -> LengthConfig:
        if self.min_completion_tokens > self.max_completion_tokens:
            raise ValueError(f"min_completion_tokens ({self.min_completion_tokens}) > max_completion_tokens "
                             f"({self.max_completion_tokens}): every record would be rejected")
        return self


class LengthRule(Rule):
    key, reason, Config = "length", "length", LengthConfig

    def __init__(self, cfg: LengthConfig):
        self.cfg = cfg
        self._tok: Any = None
        if cfg.tokenizer:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(cfg.tokenizer)

    def count(self, text: str) -> int:
        if self._tok is not None:
            return len(self._tok(text, add_special_tokens=False)["input_ids"])
        return estimate_tokens(text)

    def check(self, p: Parsed) -> str | None:
        c = self.cfg
        lo, hi, what = c.min_completion_tokens, c.max_completion_tokens, "completion"
        if p.kind == "non_reasoning":
            n = c.non_reasoning
            lo, hi, what = n.min_completion_tokens, n.max_completion_tokens, "non_reasoning completion"
        completion = p.completion_tokens if p.completion_tokens is not None else self.count(p.response)
        if completion > hi:
            return f"{what} {completion} tokens > {hi}"
        if completion < lo:
            return f"{what} {completion} tokens < {lo}"
        if c.min_reasoning_tokens > 0 and p.kind == "reasoning":
            reasoning = self.count(p.reasoning_text.strip())
            if reasoning < c.min_reasoning_tokens:
                return f"reasoning {reasoning} tokens < {c.min_reasoning_tokens}"
        return None
