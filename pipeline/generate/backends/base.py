"""The one backend interface of ``distill generate``.

A backend turns a batch of :class:`PromptInput` into ``n`` :class:`Completion` per prompt.

* Local engines (vllm, transformers) consume ``PromptInput.text``: the conversation already rendered
  with the teacher's own chat template (:func:`pipeline.chat.render_generation_prompt`) including a
  forced ``<think>\\n``. They tokenize it with ``add_special_tokens=False`` (the template already
  holds BOS where the model wants one; a second BOS changes the output of Llama-based teachers).
* Remote engines (openai) consume ``PromptInput.messages``; the server renders them.
* ``Completion.text`` is what the engine generated, *without* the forced prefix; the run joins
  ``forced_prefix + text`` into the stored assistant turn.
* ``PromptInput.seed`` is the prompt's own seed (derived from the base seed and the prompt id), so
  a prompt's samples do not depend on which other prompts share its batch (vllm, openai).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["PromptInput", "Completion", "Backend", "FinishReason", "normalize_finish_reason"]

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True)
class PromptInput:
    """One prompt to complete: the chat ``messages``, its rendered ``text`` ('' when the backend renders)."""

    messages: list[dict[str, str]]
    text: str = ""
    forced_prefix: str = ""
    seed: int | None = None
    #: which samples to draw (None: 0..sampling.n-1); a resumed run asks only for the missing ones
    sample_indices: tuple[int, ...] | None = None

    def indices(self, sampling: Any) -> tuple[int, ...]:
        return self.sample_indices if self.sample_indices is not None else tuple(range(sampling.n))


@dataclass(frozen=True)
class Completion:
    """One sample: generated text (without forced prefix), token counts and why it stopped."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    extra: dict[str, Any] = field(default_factory=dict)


def normalize_finish_reason(reason: Any) -> str:
    """Engines say 'stop'/'eos'/'stop_sequence', 'length'/'max_tokens', ... -> stop | length | abort | error."""
    r = str(reason or "").lower()
    if r in ("stop", "eos", "eos_token", "stop_sequence", "end_turn"):
        return "stop"
    if r in ("length", "max_tokens", "max_length", "model_length"):
        return "length"
    if r in ("abort", "cancelled"):
        return "abort"
    return r or "error"


@runtime_checkable
class Backend(Protocol):
    """``generate`` returns, for each prompt, one completion per ``prompt.indices(sampling)``, in order."""

    name: str
    #: Tokenizer used to render prompts locally; ``None`` when the backend takes messages (openai).
    tokenizer: Any

    def generate(self, prompts: list[PromptInput], sampling: Any) -> list[list[Completion]]: ...

    def close(self) -> None: ...
