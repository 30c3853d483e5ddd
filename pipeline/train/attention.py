"""Attention for packed training rows: no cross-document attention, no dense ``[T, T]`` masks.

A packed row holds several samples back to back; each must attend only to itself. Paths, fastest
first (``attn_implementation: auto`` picks the first that is present and logs which):

``flash_attention_2``
    The ``flash-attn`` package (an optional extra): transformers hands it the document boundaries
    (from ``position_ids``) and it runs the varlen kernel.
``varlen``
    This project's attention: the batch's document boundaries (``cu_seqlens``, computed once per
    batch in :func:`pipeline.train.data.collate`) go to ``torch.nn.attention.varlen.varlen_attn``,
    PyTorch's own FlashAttention varlen kernel (CUDA, bf16/fp16; torch >= 2.9). Without CUDA it
    runs ``scaled_dot_product_attention`` once per document (exact and mask-free, for CPU tests
    and small runs). No ``flash-attn`` build needed.
``flex_attention``
    transformers' flex attention with a document ``BlockMask`` built once per forward from
    ``position_ids`` (compiles on first use: slow start).
``sdpa`` / ``eager``
    Correct fallbacks: transformers materialises a block-diagonal ``[B, 1, T, T]`` mask from
    ``position_ids`` and SDPA runs its masked (memory-efficient or math) kernel.

All paths compute the same function (tested: equal losses on CPU; the GPU benchmark compares them
on CUDA).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["VARLEN", "choose", "register_varlen", "varlen_attention_forward", "batch_kwargs"]

log = logging.getLogger(__name__)
VARLEN = "distill_varlen"  # the name registered with transformers' attention interface


def _torch_varlen() -> Any:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def choose(requested: str, packing: bool) -> str:
    """The transformers ``attn_implementation`` to load the model with (``varlen`` -> :data:`VARLEN`)."""
    if requested == "varlen":
        register_varlen()
        return VARLEN
    if requested != "auto":
        return requested
    cuda = torch.cuda.is_available()
    if cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    if cuda and packing and _torch_varlen() is not None:
        register_varlen()
        return VARLEN
    return "sdpa"


def register_varlen() -> None:
    """Make :data:`VARLEN` a transformers attention implementation (idempotent). Its mask function
    returns ``None``: the document boundaries come from ``cu_seqlens``, never from a dense mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, _no_mask)


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


def batch_kwargs(batch: dict) -> dict:
    """The forward kwargs that carry a packed batch's document boundaries to :data:`VARLEN`."""
    return {"cu_seq_lens_q": batch["cu_seqlens"], "cu_seq_lens_k": batch["cu_seqlens"],
            "max_length_q": batch["max_seqlen"], "max_length_k": batch["max_seqlen"]}


def varlen_attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                             **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention within documents. ``query [B, Hq, T, D]``, ``key``/``value [B, Hkv, T, D]``;
    returns ``[B, T, Hq, D]`` like transformers' other attention functions."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # not a packed training batch (e.g. generation): plain causal attention
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout:
        raise ValueError("varlen attention does not implement attention dropout")
    B, Hq, T, D = query.shape
    q = query.transpose(1, 2).reshape(B * T, Hq, D)
    k = key.transpose(1, 2).reshape(B * T, key.shape[1], D)
    v = value.transpose(1, 2).reshape(B * T, value.shape[1], D)
    out = _varlen(q, k, v, cu, int(kwargs["max_length_q"]), scaling)
    return out.reshape(B, T, Hq, D), None


def _varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
            scale: float | None) -> torch.Tensor:
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        # Autocast's policy for attention (as it does for SDPA): the rotary embedding returns fp32 q/k
        # when the model's master weights are fp32, and the flash kernel needs bf16/fp16.
        dt = torch.get_autocast_dtype(dev)
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    kernel = _torch_varlen()
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and kernel is not None:
        return _torch_varlen_call(kernel, q, k, v, cu, max_len, scale)
    return _per_document_sdpa(q, k, v, cu, scale)


def _torch_varlen_call(kernel: Any, q, k, v, cu, max_len: int, scale: float | None) -> torch.Tensor:
    """``varlen_attn`` across its signatures: torch 2.9-2.11 take ``is_causal`` (no GQA, no scale);
    newer ones take ``window_size=(-1, 0)`` for causal, ``enable_gqa`` and ``scale``."""
    params = inspect.signature(kernel).parameters
    cu = cu.to(torch.int32)
    kw: dict[str, Any] = {}
    if "window_size" in params:
        kw["window_size"] = (-1, 0)
    else:
        kw["is_causal"] = True
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if "scale" in params:
        kw["scale"] = scale
    elif scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-12:
        q = q * (scale * q.shape[-1] ** 0.5)
    return kernel(q, k, v, cu, cu, max_len, max_len, **kw)


def _per_document_sdpa(q, k, v, cu, scale: float | None) -> torch.Tensor:
    """Exact reference: SDPA (causal) once per document; ``[N, H, D]`` in and out."""
    out = torch.empty_like(q)
    bounds = cu.tolist()
    rep = q.shape[1] // k.shape[1]
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a:
            continue
        qd = q[a:b].transpose(0, 1)
        kd = k[a:b].transpose(0, 1).repeat_interleave(rep, dim=0)
        vd = v[a:b].transpose(0, 1).repeat_interleave(rep, dim=0)
        out[a:b] = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale).transpose(0, 1)
    return out
