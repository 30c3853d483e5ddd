"""Rule ``format``: one well-formed think block and a usable final answer.

Rejects unless all hold:
* exactly one ``<think>`` and one ``</think>``, the response opens with ``<think>`` and closes it;
* the reasoning inside is non-empty (after whitespace), except for ``kind: non_reasoning`` records,
  whose think block must be empty (``<think>\n\n</think>``: the student learns when not to think);
* a non-empty final answer follows ``</think>``;
* for the domains in ``answer_domains`` (default math), a final answer can be extracted from it
  (the last ``\\boxed{}`` or an explicit "the answer is X"), using the shared grader's extractor so
  the filter and the eval stage agree on what "an answer" is.
"""

from __future__ import annotations

from pipeline.config import Section
from pipeline.grading import extract_answer

from filters.base import Parsed, Rule


class FormatConfig(Section):
    enabled: bool = True
    answer_domains: list[str] = ["math"]


class FormatRule(Rule):
    key, reason, Config = "format", "format", FormatConfig

    def __init__(self, cfg: FormatConfig):
        self.answer_domains = set(cfg.answer_domains)

    def check(self, p: Parsed) -> str | None:
        if p.n_open != 1 or p.n_close != 1:
            return f"expected one <think> and one </think>, found {p.n_open} and {p.n_close}"
        if not p.opens_first:
            return "response does not open with <think>"
        if p.reasoning is None:
            return "</think> comes before <think>"
        if p.kind == "non_reasoning":
            if p.reasoning.strip():
                return "non_reasoning sample has reasoning in its think block (expected <think>\\n\\n</think>)"
        elif not p.reasoning.strip():
            return "empty reasoning"
        if not p.answer.strip():
            return "no final answer after </think>"
        if p.domain in self.answer_domains and extract_answer(p.answer) is None:
            return "no extractable final answer (\\boxed{} or 'the answer is')"
        return None
