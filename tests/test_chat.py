"""The chat renderer on a real tokenizer: forced <think>, templates that strip reasoning."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from pipeline.chat import (
    render_generation_prompt,
    split_think,
    template_keeps_think,
    training_template,
    with_forced_think,
)
from pipeline.tiny import CHATML_TEMPLATE

# The DeepSeek-R1-Distill template's behaviour that matters here: it cuts everything up to
# </think> out of assistant turns, and newer revisions open "<think>\n" in the generation prompt.
R1_DISTILL_LIKE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% else %}{% set c = m['content'] %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "<｜Assistant｜>{{ c }}<｜end▁of▁sentence｜>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)


@pytest.fixture()
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_forced_think_is_appended_and_reported(tok):
    msgs = [{"role": "user", "content": "What is 1+1?"}]
    text, prefix = render_generation_prompt(tok, msgs, force_think=True)
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    assert prefix == "<think>\n"
    plain, none = render_generation_prompt(tok, msgs, force_think=False)
    assert plain.endswith("<|im_start|>assistant\n") and none == ""
    assert with_forced_think(prefix, "2 is it\n</think>\n\\boxed{2}") == "<think>\n2 is it\n</think>\n\\boxed{2}"


def test_template_that_opens_think_itself_is_not_doubled(tok):
    tok.chat_template = R1_DISTILL_LIKE
    text, prefix = render_generation_prompt(tok, [{"role": "user", "content": "q"}], force_think=True)
    assert text.count("<think>") == 1
    assert prefix == "<think>\n"


def test_non_reasoning_prefills_the_empty_think_block(tok):
    msgs = [{"role": "user", "content": "Who wrote Hamlet?"}]
    text, prefix = render_generation_prompt(tok, msgs, force_think=True, no_think=True)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and prefix == "<think>\n\n</think>\n\n"
    tok.chat_template = R1_DISTILL_LIKE  # a template that opens <think> itself: closed right away, not doubled
    text, prefix = render_generation_prompt(tok, msgs, no_think=True)
    assert text.endswith("<｜Assistant｜><think>\n\n</think>\n\n") and text.count("<think>") == 1
    assert with_forced_think(prefix, "Shakespeare.") == "<think>\n\n</think>\n\nShakespeare."


def test_reasoning_stripping_template_is_detected(tok):
    assert template_keeps_think(tok)
    assert training_template(tok) == tok.chat_template
    tok.chat_template = R1_DISTILL_LIKE
    assert not template_keeps_think(tok)
    assert training_template(tok) == CHATML_TEMPLATE


def test_split_think():
    assert split_think("<think>\nabc\n</think>\nans") == ("\nabc\n", "\nans")
    assert split_think("<think>\nunclosed") == (None, "")
    # forced prefix lives in the prompt: a completion may start mid-reasoning
    assert split_think("abc</think>x") == ("abc", "x")
