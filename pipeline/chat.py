"""The one chat renderer: conversations -> model text with the tokenizer's own chat template.

* :func:`render_generation_prompt` renders the user turn(s) plus the assistant opener and, when
  ``force_think`` is set, appends ``<think>\\n`` as the DeepSeek-R1 model card recommends (unless
  the template already opens the think block itself, as newer R1-Distill templates do).
* :func:`template_keeps_think` detects templates that strip the ``<think>`` reasoning from
  assistant turns (DeepSeek-R1-Distill's does); training with such a template would silently train
  on answers only, so :func:`training_template` falls back to ChatML with a warning.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["THINK_OPEN", "THINK_CLOSE", "EMPTY_THINK", "CHATML_TEMPLATE", "render_generation_prompt",
           "template_keeps_think", "training_template", "with_forced_think", "split_think"]

log = logging.getLogger(__name__)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"  # the R1 reasoning tags; every module imports them from here
EMPTY_THINK = "<think>\n\n</think>\n\n"  # a non-reasoning answer's opener (kept in the record)

# ChatML, as Qwen2 ships it, with the ``add_generation_prompt`` turn opener. Keeps the assistant
# content verbatim (including ``<think>`` blocks); the ``{% generation %}`` markers let
# ``apply_chat_template(..., return_assistant_tokens_mask=True)`` find trained tokens.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def render_generation_prompt(tokenizer: Any, messages: list[dict[str, str]], force_think: bool = True,
                             no_think: bool = False) -> tuple[str, str]:
    """Return ``(prompt_text, forced_prefix)``.

    ``no_think`` (non-reasoning samples) prefills the empty block ``<think>\\n\\n</think>\\n\\n`` instead,
    replacing a ``<think>`` the template opened itself, so the teacher answers directly.

    ``forced_prefix`` is the part of the assistant response that lives in the prompt (``"<think>\\n"``
    or ``""``); the generated completion must be prefixed with it to give the whole response.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        from jinja2 import Template  # transformers depends on jinja2

        text = Template(CHATML_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    stripped = text.rstrip()
    if no_think:
        base = stripped[:-len(THINK_OPEN)] if stripped.endswith(THINK_OPEN) else text
        return base + EMPTY_THINK, EMPTY_THINK
    if stripped.endswith(THINK_OPEN):
        # The template opened the think block itself: that text is part of the response.
        return text, text[len(stripped) - len(THINK_OPEN):]
    if force_think:
        return text + THINK_OPEN + "\n", THINK_OPEN + "\n"
    return text, ""


def with_forced_think(prefix: str, completion: str) -> str:
    """The whole assistant response: forced prefix + generated completion."""
    return prefix + completion if prefix and not completion.startswith(prefix.strip()) else completion


def split_think(response: str) -> tuple[str | None, str]:
    """``(reasoning, answer)``: reasoning is None when there is no closed think block."""
    start = response.find(THINK_OPEN)
    end = response.find(THINK_CLOSE)
    if end < 0:
        return None, ""
    reasoning = response[start + len(THINK_OPEN):end] if 0 <= start < end else response[:end]
    return reasoning, response[end + len(THINK_CLOSE):]


def template_keeps_think(tokenizer: Any) -> bool:
    """True when rendering an assistant turn keeps its ``<think>`` reasoning verbatim."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    probe = "PROBE_REASONING_7f3a"
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": f"{THINK_OPEN}\n{probe}\n{THINK_CLOSE}\n\nanswer"}]
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception:  # a template that raises on this conversation cannot be trusted either
        return False
    return probe in text and THINK_OPEN in text


def training_template(tokenizer: Any) -> str:
    """The chat template to train with: the tokenizer's own if it keeps reasoning, else ChatML."""
    if template_keeps_think(tokenizer):
        return tokenizer.chat_template
    log.warning("the tokenizer's chat template drops <think> reasoning from assistant turns (or is "
                "missing); training with the project's ChatML template instead so reasoning is kept")
    return CHATML_TEMPLATE
