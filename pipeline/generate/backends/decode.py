"""A batched sampler for the transformers backend: preallocated KV cache, finished rows dropped.

Why not ``model.generate``: on a CPU, with small models and many short samples, two costs of
Hugging Face's loop dominate. Its ``DynamicCache`` grows by ``torch.cat`` every step (the whole cache
is copied: quadratic in the length), and a batch keeps computing every row until its longest
sample ends (a sample that stops at 130 tokens in a batch whose longest runs to 320 costs 320).
``StaticCache`` removes the copy but attends over the full preallocated length every step.

Rules:

* The KV cache of each layer is one buffer ``[rows, heads, prompt + max_new, head_dim]`` written in
  place; attention sees only the filled prefix (:class:`BufferLayer`).
* Finished rows (EOS sampled) stop costing compute: they are dropped from the batch, cache and
  mask whenever at least ``compact_ratio`` of the rows still in the batch are finished (dropping
  copies the buffers, so it is not done for every single row).
* Sampling is HF's ``temperature`` then ``top_p`` (at least one token kept; ``top_k`` off), or
  argmax when ``temperature == 0``; the draws come from the ``torch.Generator`` passed in, so a
  batch is reproducible from its seed. Greedy output equals ``model.generate(do_sample=False)``
  token for token (tested).
* Prompts are left-padded; position ids count real tokens only, as ``generate`` does.
* Only for decoder-only models whose layers are all full attention (:func:`supports`); anything
  else (sliding windows, recurrent or hybrid caches) goes through ``model.generate``.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["BufferLayer", "supports", "sample_batch"]


def supports(model: Any) -> bool:
    """True when :func:`sample_batch` can run ``model`` (decoder-only, full attention in every layer)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    if getattr(cfg, "num_hidden_layers", None) is None:
        return False
    types = getattr(cfg, "layer_types", None)
    if types is not None:  # authoritative where the config has it (Qwen2: full_attention unless use_sliding_window)
        return all(t == "full_attention" for t in types)
    return not (getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True))


@functools.cache
def _buffer_layer_class():
    from transformers.cache_utils import DynamicLayer

    class _BufferLayer(DynamicLayer):
        """A ``DynamicLayer`` that writes into a preallocated buffer instead of concatenating."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity
            self._k = self._v = None
            self._n = 0

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            if self._k is None:
                b, h, _, d = key_states.shape
                self._k = key_states.new_empty((b, h, self.capacity, d))
                self._v = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
            t = key_states.shape[-2]
            if self._n + t > self.capacity:
                raise RuntimeError(f"KV buffer full ({self.capacity} positions)")
            self._k[:, :, self._n:self._n + t] = key_states
            self._v[:, :, self._n:self._n + t] = value_states
            self._n += t
            self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]
            return self.keys, self.values

        def batch_select_indices(self, indices) -> None:
            if self._k is not None:
                self._k, self._v = self._k[indices], self._v[indices]
                self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]

    return _BufferLayer


def BufferLayer(capacity: int):  # noqa: N802 - a factory that reads like the class it builds
    """A cache layer with a preallocated ``capacity``-position buffer (built lazily: transformers import)."""
    return _buffer_layer_class()(capacity)


def _next_tokens(logits, temperature: float, top_p: float, generator):
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def sample_batch(model, input_ids, attention_mask, *, max_new_tokens: int, eos_ids: set[int], temperature: float,
                 top_p: float, generator=None, compact_ratio: float = 0.25) -> list[list[int]]:
    """Complete each left-padded row of ``input_ids``; return the new tokens per row (EOS included when sampled).

    ``input_ids`` / ``attention_mask``: ``[rows, width]`` on the model's device. Rows are independent
    samples (repeat a prompt's row for several samples).
    """
    import torch
    from transformers.cache_utils import Cache

    rows, width = input_ids.shape
    cache = Cache(layers=[BufferLayer(width + max_new_tokens) for _ in range(model.config.num_hidden_layers)])
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    mask = torch.zeros((rows, width + max_new_tokens), dtype=attention_mask.dtype, device=attention_mask.device)
    mask[:, :width] = attention_mask
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=input_ids.device)
    new = torch.full((rows, max_new_tokens), -1, dtype=torch.long, device=input_ids.device)
    active = torch.arange(rows, device=input_ids.device)  # original row of each batch row
    done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        next_pos = positions[:, -1] + 1
        length = width
        for step in range(max_new_tokens):
            tokens = _next_tokens(logits, temperature, top_p, generator)
            new[active[~done], step] = tokens[~done]
            done |= torch.isin(tokens, eos)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            if int(done.sum()) >= max(1, compact_ratio * len(done)):
                keep = (~done).nonzero().squeeze(-1)
                for layer in cache.layers:
                    layer.batch_select_indices(keep)
                active, done, tokens, next_pos, mask = active[keep], done[keep], tokens[keep], next_pos[keep], mask[keep]
            mask[:, length] = 1
            length += 1
            logits = model(input_ids=tokens[:, None], attention_mask=mask[:, :length], position_ids=next_pos[:, None],
                           past_key_values=cache, use_cache=True).logits[:, -1]
            next_pos = next_pos + 1
    out = []
    for row in new.tolist():
        cut = row.index(-1) if -1 in row else len(row)
        out.append(row[:cut])
    return out
