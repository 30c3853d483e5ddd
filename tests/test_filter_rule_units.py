"""Rule-level unit tests (datatrove style): one rule, one parsed record, the exact outcome.

Each test builds one rule from its own config section and one record, and asserts the rule's exact
detail string (or ``None``), so a changed threshold or message shows up here, next to the rule.
The end-to-end behaviour (every rule together, the runner, the report) is in test_filter_rules.py
and test_filter_stage.py.
"""

from __future__ import annotations

import pytest

from filters.answer import AnswerConfig, AnswerRule
from filters.base import BatchRule, CorpusRule, Rule, parse
from filters.code_blocks import CodeBlockConfig, CodeBlockRule
from filters.decontam import DecontamConfig, DecontamRule
from filters.dedup import DedupConfig, DedupRule
from filters.format import FormatConfig, FormatRule
from filters.language import LanguageConfig, LanguageRule
from filters.length import LengthConfig, LengthRule
from filters.paragraphs import ParagraphConfig, ParagraphRule
from filters.redundancy import RedundancyConfig, RedundancyRule
from filters.registry import RULES, enabled_reasons, reason_order, style_reasons
from filters.truncation import TruncationConfig, TruncationRule

GOOD = "<think>\nThe odd numbers are 1, 3, 5 and 7, and they add up to 16.\n</think>\n\nThe sum is $\\boxed{16}$."


def parsed(response: str = GOOD, prompt: str = "What is 1 + 3 + 5 + 7?", **fields):
    return parse({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                  **fields})


def test_format_two_think_blocks():
    rule = FormatRule(FormatConfig())
    assert rule.check(parsed("<think>a</think><think>b</think> \\boxed{1}")) == \
        "expected one <think> and one </think>, found 2 and 2"
    assert rule.check(parsed()) is None


def test_format_answer_not_extractable():
    rule = FormatRule(FormatConfig())
    assert rule.check(parsed("<think>\nwork\n</think>\nDone.")) == \
        "no extractable final answer (\\boxed{} or 'the answer is')"
    assert rule.check(parsed("<think>\nwork\n</think>\nDone.", domain="science")) is None  # not an answer domain


def test_truncation_finish_reason_and_unclosed_think():
    rule = TruncationRule(TruncationConfig())
    assert rule.check(parsed(finish_reason="length")) == "finish_reason == 'length'"
    assert rule.check(parsed("<think>\nstill thinking")) == "unclosed <think> block"
    assert rule.check(parsed(finish_reason="stop")) is None


def test_length_uses_the_records_own_token_count():
    rule = LengthRule(LengthConfig(max_completion_tokens=100))
    assert rule.check(parsed(num_tokens={"completion": 101})) == "completion 101 tokens > 100"
    assert rule.check(parsed(num_tokens={"completion": 100})) is None


def test_length_short_reasoning():
    assert LengthRule(LengthConfig()).check(parsed("<think>ok</think> \\boxed{1}")) == "reasoning 1 tokens < 5"


def test_language_han_run_in_english_reasoning():
    rule = LanguageRule(LanguageConfig())
    english = "We add the numbers one by one and check every partial sum carefully here. " * 12
    text = english + "所以我们得到答案是十六对吧 and so the total is sixteen."
    assert rule.check(parsed(f"<think>\n{text}\n</think>\n\\boxed{{16}}")) == \
        "reasoning: a run of 13 Han characters in Latin text"
    half = "We add the numbers one by one. 所以我们得到答案是十六对吧 and so the total is sixteen."
    assert rule.check(parsed(f"<think>\n{half}\n</think>\n\\boxed{{16}}")) == \
        "reasoning: minority script share 0.50 > 0.1"


def test_redundancy_tail_loop():
    loop = "so the answer is 16 " * 60
    assert RedundancyRule(RedundancyConfig()).check(parsed(f"<think>\n{loop}\n</think>\n\\boxed{{16}}")) == \
        "reasoning ends in a loop (period 20 chars)"


def test_long_paragraph():
    wall = " ".join(["word"] * 301)
    assert ParagraphRule(ParagraphConfig()).check(parsed(f"<think>\n{wall}\n</think>\n\\boxed{{1}}")) == \
        "a paragraph of 301 words > 300"


def test_code_block_scope_and_fence():
    rule = CodeBlockRule(CodeBlockConfig())
    p = parsed("<think>\n```python\nprint(1)\n```\n</think>\n\\boxed{1}")
    assert rule.applies(p) and rule.check(p) == "fenced code block"
    assert not rule.applies(parsed(domain="code"))


def test_answer_wrong_and_noted():
    rule = AnswerRule(AnswerConfig())
    p = parsed(answer="15")
    assert rule.applies(p)
    assert rule.check(p) == "wrong: got '16', reference '15'"
    assert p.notes == {"wrong_answer": "wrong"}
    q = parsed()  # no reference: out of scope, noted
    assert not rule.applies(q) and q.notes == {"wrong_answer": "no_reference"}


def test_decontam_hit_names_the_item(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"problem": "Find the number of ordered pairs of positive integers whose product is 36."}\n')
    rule = DecontamRule(DecontamConfig(benchmarks=[str(bench)], n=8))
    p = parsed(prompt="Please find the number of ordered pairs of positive integers whose product is 36.")
    assert rule.check(p) == "shares a 8-word span with bench:1" and p.notes == {"contaminated": "bench:1"}


def test_dedup_exact_then_prompt_cap():
    cfg = DedupConfig(near=False, max_per_prompt=1)
    rule = DedupRule(cfg)
    a, b = parsed(prompt_id="q"), parsed(GOOD.replace("16.", "sixteen."), prompt_id="q")
    sig_a = DedupRule.signature(a, cfg)
    assert rule.check(sig_a) == {}
    rule.admit(sig_a, 0)
    assert rule.check(sig_a) == {"duplicate": "same normalised prompt and response as an earlier kept record",
                                 "prompt_cap": "prompt already has 1 kept samples"}
    assert rule.check(DedupRule.signature(b, cfg)) == {"prompt_cap": "prompt already has 1 kept samples"}
    assert rule.active == ("duplicate", "prompt_cap")


# --------------------------------------------------------------------------- the table itself

def test_table_declares_one_name_per_rule():
    for cls in RULES:
        assert cls.__module__ == f"filters.{cls.key}", cls  # module = config key
        # every rule is on by default except the LLM judge, which needs an endpoint (opt-in)
        assert cls.Config.model_fields["enabled"].default is (cls.key != "judge")
        assert issubclass(cls, (Rule, BatchRule, CorpusRule))
    assert len(set(reason_order())) == len(reason_order())
    assert style_reasons() == ["mixed_language", "redundancy", "code_block"]


def test_enabled_reasons_follow_the_switches():
    from filters.config import FilterConfig

    default = enabled_reasons(FilterConfig())
    assert {"mixed_language", "near_duplicate"} <= set(default) and default[0] == "format"
    cfg = FilterConfig(language={"enabled": False}, dedup={"near": False})
    assert enabled_reasons(cfg) == [r for r in default if r not in ("mixed_language", "near_duplicate")]
    assert enabled_reasons(FilterConfig(dedup={"enabled": False}))[-1] not in DedupRule.reasons


@pytest.mark.parametrize("cls", RULES, ids=lambda c: c.key)
def test_every_rule_has_a_docstring_module(cls):
    import importlib

    assert importlib.import_module(cls.__module__).__doc__.strip()


def test_the_table_refuses_a_misordered_or_duplicate_rule(monkeypatch):
    import filters.registry as registry

    monkeypatch.setattr(registry, "RULES", (DedupRule, FormatRule))  # a corpus rule before a per-record one
    with pytest.raises(TypeError, match="per-record, then batch, then corpus"):
        registry._check_table()
    monkeypatch.setattr(registry, "RULES", (FormatRule, FormatRule))
    with pytest.raises(TypeError, match="is taken"):
        registry._check_table()


NO_THINK = "<think>\n\n</think>\n\nParis is the capital of France."


def test_format_non_reasoning_keeps_the_empty_think_block():
    rule = FormatRule(FormatConfig())
    general = {"kind": "non_reasoning", "domain": "general"}
    assert rule.check(parsed(NO_THINK, "What is the capital of France?", **general)) is None
    assert rule.check(parsed(NO_THINK, domain="general")) == "empty reasoning"  # a reasoning sample may not
    assert rule.check(parsed(GOOD, **general)) == \
        "non_reasoning sample has reasoning in its think block (expected <think>\\n\\n</think>)"
    assert rule.check(parsed("Paris.", **general)) == "expected one <think> and one </think>, found 0 and 0"


def test_length_limits_per_kind():
    rule = LengthRule(LengthConfig())
    nr = {"kind": "non_reasoning", "domain": "general"}
    assert rule.check(parsed(NO_THINK, **nr)) is None  # no reasoning minimum for a non-reasoning sample
    assert rule.check(parsed(NO_THINK, num_tokens={"completion": 4097}, **nr)) == \
        "non_reasoning completion 4097 tokens > 4096"
    assert rule.check(parsed(num_tokens={"completion": 4097})) is None  # a reasoning trace may be long
    assert rule.check(parsed(NO_THINK, num_tokens={"completion": 0}, **nr)) == "non_reasoning completion 0 tokens < 1"
