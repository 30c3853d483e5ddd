"""Distillation losses: small pure functions that return SUMS over trained tokens plus token counts.

Rules every function here follows
---------------------------------
* Only trained tokens count: a position whose label equals ``ignore_index`` contributes nothing
  (not even to the token count). Labels are the already-shifted targets of each position.
* Softmax is computed in fp32 whatever the logits' dtype (bf16 log-softmax over a 150K vocabulary
  loses the small probabilities the KD signal lives in).
* Temperature: both distributions are ``softmax(logits / T)``; the divergence is multiplied by
  ``T**2`` (Hinton et al. 2015) so its gradient magnitude does not shrink as ``T`` grows and
  ``kd_alpha`` keeps the same meaning at every temperature. Cross-entropy is always at T = 1.
* Return value is a :class:`LossSums` ``(loss_sum, num_tokens)``: the caller (the training loop)
  adds sums and counts over every micro-batch of an accumulated batch and divides once, so a
  long sample weighs per token, not per micro-batch.

Divergences (``p`` = teacher, ``q`` = student, both at temperature ``T``)
* ``forward_kl``  ``KL(p || q) = sum p (log p - log q)``: mean-seeking, the classic Hinton loss;
  equal to ``F.kl_div(log q, p)``.
* ``reverse_kl``  ``KL(q || p)``: mode-seeking (MiniLLM).
* ``generalized_jsd(beta)``: ``beta KL(p || m) + (1 - beta) KL(q || m)`` with mixture
  ``m = beta p + (1 - beta) q`` (GKD, Agarwal et al. 2024; TRL's ``GKDTrainer``). As in TRL, the
  endpoints are defined as the KLs: ``beta = 0`` is forward KL and ``beta = 1`` is reverse KL
  (the interior formula itself tends to 0 at both ends, so the endpoints are a convention).

Memory
------
:func:`fused_linear_kd` never holds full-vocabulary logits for more than ``chunk_size`` trained
tokens: it takes the student's final hidden states and ``lm_head`` weight, and per chunk computes
the logits, the loss, and the gradient w.r.t. the chunk's hidden states and the weight at once
(so backward keeps no logits at all; the same trick as Liger's fused linear cross-entropy).
:func:`chunked_kd_from_logits` is the fallback when the model must produce logits itself (e.g.
FSDP shards ``lm_head``): it chunks the fp32 work over trained tokens and recomputes each chunk
in backward (``torch.utils.checkpoint``).

Top-k teacher (offline cache)
-----------------------------
A :class:`TopK` teacher gives, per trained token, the teacher's ``k`` most likely token ids, their
log-probabilities at temperature ``T``, and one more "rest" bucket ``log(1 - sum p_topk)``. The
student is compared on the same ``k + 1`` buckets: its log-probs at the ``k`` ids and the exact
log of its remaining mass (a logsumexp over the other ids). Both sides are then proper
distributions over ``k + 1`` outcomes, so every divergence above is defined and is ``0`` iff the
student matches the teacher's top-k and its total tail mass; nothing is renormalised away.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE_INDEX", "KDKind", "LossSums", "TopK", "KDSpec", "KDSums",
    "log_probs", "token_divergence", "forward_kl", "reverse_kl", "generalized_jsd", "kd_divergence",
    "cross_entropy_sum", "topk_bucket_logprobs", "teacher_topk", "topk_kd",
    "kd_chunk_sums", "fused_linear_kd", "fused_linear_cross_entropy", "chunked_kd_from_logits", "naive_kd_from_logits",
]

IGNORE_INDEX = -100
KDKind = Literal["forward_kl", "reverse_kl", "jsd"]


class LossSums(NamedTuple):
    """A sum over trained tokens (fp32 scalar, differentiable) and how many tokens it covers."""

    loss_sum: torch.Tensor
    num_tokens: torch.Tensor


class TopK(NamedTuple):
    """A top-k teacher for ``n`` tokens: ``ids [n, k]`` and ``logprobs [n, k + 1]`` (last = rest)."""

    ids: torch.Tensor
    logprobs: torch.Tensor


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(logits / T)`` in fp32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    return F.log_softmax(z, dim=-1)


def _plogp_diff(logp_a: torch.Tensor, logp_b: torch.Tensor) -> torch.Tensor:
    """Per row ``sum a (log a - log b)`` with the convention ``0 log 0 = 0`` (a = exp(logp_a))."""
    p = logp_a.exp()
    terms = p * (logp_a - logp_b)
    return torch.where(p > 0, terms, torch.zeros_like(terms)).sum(-1)


def token_divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: KDKind = "forward_kl",
                     beta: float = 0.5) -> torch.Tensor:
    """Per-row divergence ``[n]`` between two log-distributions ``[n, K]`` (rows sum to 1 in prob)."""
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return _plogp_diff(teacher_logp, student_logp)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return _plogp_diff(student_logp, teacher_logp)
    if kind != "jsd":
        raise ValueError(f"unknown kd_loss {kind!r} (expected forward_kl, reverse_kl or jsd)")
    if not 0.0 < beta < 1.0:
        raise ValueError(f"kd_beta must be in [0, 1], got {beta}")
    mix = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1.0 - beta)]), dim=0)
    return beta * _plogp_diff(teacher_logp, mix) + (1.0 - beta) * _plogp_diff(student_logp, mix)


def _select(labels: torch.Tensor, ignore_index: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Flatten ``[..., V]`` tensors to ``[n_trained, V]`` rows where ``labels != ignore_index``."""
    keep = (labels != ignore_index).reshape(-1)
    return tuple(t.reshape(-1, t.shape[-1])[keep] for t in tensors) + (keep.sum(),)


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  temperature: float = 1.0, ignore_index: int = IGNORE_INDEX, kind: KDKind = "forward_kl",
                  beta: float = 0.5) -> LossSums:
    """``T**2 * sum over trained tokens of divergence(teacher, student)``; logits ``[..., V]``, labels ``[...]``.

    Teacher logits may have more columns than the student's (padded embedding rows); both are
    cut to the narrower width, which must be the real vocabulary (see ``tokenizer_check``).
    """
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s, t, n = _select(labels, ignore_index, student_logits[..., :vocab], teacher_logits[..., :vocab])
    div = token_divergence(log_probs(s, temperature), log_probs(t.detach(), temperature), kind, beta)
    return LossSums(div.sum() * temperature**2, n)


def forward_kl(student_logits, teacher_logits, labels, temperature: float = 1.0,
               ignore_index: int = IGNORE_INDEX) -> LossSums:
    """``T**2 * sum KL(teacher || student)`` over trained tokens."""
    return kd_divergence(student_logits, teacher_logits, labels, temperature, ignore_index, "forward_kl")


def reverse_kl(student_logits, teacher_logits, labels, temperature: float = 1.0,
               ignore_index: int = IGNORE_INDEX) -> LossSums:
    """``T**2 * sum KL(student || teacher)`` over trained tokens."""
    return kd_divergence(student_logits, teacher_logits, labels, temperature, ignore_index, "reverse_kl")


def generalized_jsd(student_logits, teacher_logits, labels, beta: float = 0.5, temperature: float = 1.0,
                    ignore_index: int = IGNORE_INDEX) -> LossSums:
    """``T**2 * sum JSD_beta`` over trained tokens (beta 0 = forward KL, 1 = reverse KL)."""
    return kd_divergence(student_logits, teacher_logits, labels, temperature, ignore_index, "jsd", beta)


def cross_entropy_sum(student_logits: torch.Tensor, labels: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX) -> LossSums:
    """Summed next-token cross-entropy (fp32, T = 1) over trained tokens."""
    flat = labels.reshape(-1)
    ce = F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]).float(), flat,
                         ignore_index=ignore_index, reduction="sum")
    return LossSums(ce, (flat != ignore_index).sum())


# --------------------------------------------------------------------------- top-k teacher

def teacher_topk(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopK:
    """The teacher's top-``k`` ids and log-probs at ``T`` plus the exact rest bucket (rows ``[n, V]``)."""
    logp = log_probs(teacher_logits, temperature)
    k = min(k, logp.shape[-1])
    top, ids = logp.topk(k, dim=-1)
    return TopK(ids, torch.cat([top, _rest_logprob(logp, ids)], dim=-1))


def _rest_logprob(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log(sum of probability outside ids)`` per row, exactly (logsumexp over the other columns)."""
    masked = logp.scatter(-1, ids, float("-inf"))
    return torch.logsumexp(masked, dim=-1, keepdim=True)


def topk_bucket_logprobs(student_logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The student's log-probs on the teacher's ``k`` ids plus its rest bucket: ``[n, k + 1]``."""
    logp = log_probs(student_logits, temperature)
    return torch.cat([logp.gather(-1, ids), _rest_logprob(logp, ids)], dim=-1)


def topk_kd(student_logits: torch.Tensor, teacher: TopK, temperature: float = 1.0, kind: KDKind = "forward_kl",
            beta: float = 0.5) -> torch.Tensor:
    """``T**2 * sum`` of the divergence on ``k + 1`` buckets; rows are trained tokens already."""
    s = topk_bucket_logprobs(student_logits, teacher.ids.long(), temperature)
    return token_divergence(s, teacher.logprobs.float(), kind, beta).sum() * temperature**2


# --------------------------------------------------------------------------- chunked / fused

@dataclass(frozen=True)
class KDSpec:
    """What to compute per chunk. ``alpha`` weighs KD; CE gets ``1 - alpha``."""

    kind: KDKind = "forward_kl"
    beta: float = 0.5
    temperature: float = 1.0
    alpha: float = 0.5
    chunk_size: int = 1024


class KDSums(NamedTuple):
    """Sums over trained tokens: ``loss = alpha * kd + (1 - alpha) * ce`` (only ``loss`` has a grad)."""

    loss_sum: torch.Tensor
    kd_sum: torch.Tensor
    ce_sum: torch.Tensor
    num_tokens: torch.Tensor


# A teacher for trained-token rows [start, end): full logits [n, V'] or a TopK.
TeacherChunk = Callable[[int, int], "torch.Tensor | TopK"]


def kd_chunk_sums(student_logits: torch.Tensor, teacher: torch.Tensor | TopK, targets: torch.Tensor,
                  spec: KDSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kd_sum, ce_sum)`` for rows that are all trained tokens (no ignore_index here).

    CE is always computed (it is logged even when ``alpha = 1``); one fp32 log-softmax serves
    both terms when ``T = 1``.
    """
    logp = log_probs(student_logits, spec.temperature)
    ce_logp = logp if spec.temperature == 1.0 else log_probs(student_logits)
    ce = -ce_logp.gather(-1, targets[:, None].long()).sum()
    if isinstance(teacher, TopK):
        ids = teacher.ids.long()
        s = torch.cat([logp.gather(-1, ids), _rest_logprob(logp, ids)], dim=-1)
        t = teacher.logprobs.float()
    else:
        s = logp
        t = log_probs(teacher[..., : student_logits.shape[-1]].detach(), spec.temperature)
    kd = token_divergence(s, t, spec.kind, spec.beta).sum() * spec.temperature**2
    return kd, ce


def _forward_kl_chunk(z: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                      spec: KDSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward KL + CE and ``d(alpha kd + (1 - alpha) ce)/dz`` in closed form, in place in ``z``.

    Same values as :func:`kd_chunk_sums` (tested) with about 3 ``[chunk, V]`` fp32 buffers instead
    of autograd's ~9: ``d kd/dz = T (q - p)`` and ``d ce/dz = softmax(z) - onehot``.
    """
    t, a = spec.temperature, spec.alpha
    lse1 = torch.logsumexp(z, -1, keepdim=True)
    ce = (lse1.squeeze(-1) - z.gather(-1, targets[:, None].long()).squeeze(-1)).sum()
    if t != 1.0:
        z.div_(t)
        lse_t = torch.logsumexp(z, -1, keepdim=True)
    else:
        lse_t = lse1
    z.sub_(lse_t)  # z = log q
    logp = teacher[..., : z.shape[-1]].float() / t
    logp.sub_(torch.logsumexp(logp, -1, keepdim=True))
    p = logp.exp()
    logp.sub_(z).mul_(p).masked_fill_(p == 0, 0.0)  # p (log p - log q), 0 log 0 = 0
    kd = logp.sum() * t**2
    del logp
    z.exp_()  # z = q
    if t != 1.0 and a < 1.0:
        s1 = z.pow(t).mul_((t * lse_t - lse1).exp())  # softmax(z_original)
        z.mul_(a * t).sub_(p, alpha=a * t).add_(s1, alpha=1.0 - a)
        del s1
    elif t != 1.0:
        z.sub_(p).mul_(a * t)
    else:
        z.sub_(p, alpha=a)  # q - a p - (1 - a) onehot (T = 1: softmax(z) = q)
    if a < 1.0:
        rows = torch.arange(z.shape[0], device=z.device)
        z[rows, targets.long()] -= 1.0 - a
    return kd, ce, z


# A chunk's loss terms and gradient: ``chunk_fn(z, start, end, need_grad) -> (terms [k], dloss/dz or None)``
# where ``z`` is the chunk's fp32 logits (the function may overwrite it) and ``terms[0]`` is the loss.
ChunkFn = Callable[[torch.Tensor, int, int, bool], "tuple[torch.Tensor, torch.Tensor | None]"]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would use on ``t``'s device (bf16 under bf16 autocast), else ``t``'s."""
    dev = t.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return t.dtype


class _FusedLinear(torch.autograd.Function):
    """``sum_chunks chunk_fn(hidden[chunk] @ weight.T + bias)``, gradients computed in forward.

    Per chunk of ``chunk_size`` rows: the logits (fp32), the loss terms and ``dloss/dlogits`` (from
    ``chunk_fn``), then ``grad_hidden`` rows and ``grad_weight += g^T h`` at once, so backward keeps
    no logits at all (the Liger "fused linear cross-entropy" design). Matmuls run in the autocast
    dtype (bf16 on GPUs), accumulation of the weight gradient in fp32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, chunk_fn, chunk_size, n_terms):  # noqa: D401 - autograd API
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need = need_h or need_w or need_b
        cdt = _compute_dtype(weight)
        w_c = weight.to(cdt)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        totals = hidden.new_zeros((n_terms,), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end].to(cdt)
            z = F.linear(h, w_c, None if bias is None else bias.to(cdt)).float()
            terms, gz = chunk_fn(z, start, end, need)
            totals += terms.detach()
            if need:
                if need_h:
                    grad_h[start:end] = (gz.to(cdt) @ w_c).to(grad_h.dtype)
                if need_w:
                    grad_w += (gz.t().to(cdt) @ h).float()
                if need_b:
                    grad_b += gz.sum(0)
            del z, terms, gz
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return totals

    @staticmethod
    def backward(ctx, g_totals):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        g = g_totals[0]  # only the first term (the loss) is differentiated
        out_h = None if grad_h is None else grad_h * g.to(grad_h.dtype)
        out_w = None if grad_w is None else (grad_w * g).to(w_dtype)
        out_b = None if grad_b is None else (grad_b * g).to(b_dtype)
        return out_h, out_w, out_b, None, None, None


def _fused_linear(hidden, weight, bias, chunk_fn: ChunkFn, chunk_size: int, n_terms: int) -> torch.Tensor:
    """``[n_terms]`` fp32 sums; element 0 carries the gradient (the others are for logging)."""
    totals = _FusedLinear.apply(hidden, weight, bias, chunk_fn, chunk_size, n_terms)
    return torch.cat([totals[:1], totals[1:].detach()])


def _ce_chunk(targets: torch.Tensor) -> ChunkFn:
    """Cross-entropy (T = 1) of rows against ``targets`` and its gradient ``softmax(z) - onehot``."""

    def chunk(z: torch.Tensor, start: int, end: int, need_grad: bool):
        tgt = targets[start:end].long()
        lse = torch.logsumexp(z, -1, keepdim=True)
        ce = (lse.squeeze(-1) - z.gather(-1, tgt[:, None]).squeeze(-1)).sum()
        if not need_grad:
            return ce.reshape(1), None
        z.sub_(lse).exp_()  # softmax, in place
        z[torch.arange(z.shape[0], device=z.device), tgt] -= 1.0
        return ce.reshape(1), z

    return chunk


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               chunk_size: int = 2048, bias: torch.Tensor | None = None) -> LossSums:
    """Summed next-token cross-entropy from final hidden states ``[n, H]`` of TRAINED tokens and
    ``lm_head`` (``weight [V, H]``), never holding more than ``chunk_size x V`` fp32 logits and
    keeping none for backward. Equal to ``cross_entropy_sum(hidden @ weight.T, targets)`` in value
    and gradient (tested); ``targets [n]`` hold no ``ignore_index``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = torch.tensor(hidden.shape[0], device=hidden.device)
    if hidden.shape[0] == 0:
        return LossSums((hidden.sum() * 0.0 + weight.sum() * 0.0).float(), n)
    totals = _fused_linear(hidden, weight, bias, _ce_chunk(targets), chunk_size, 1)
    return LossSums(totals[0], n)


def _kd_chunk(targets: torch.Tensor, teacher: TeacherChunk, spec: KDSpec) -> ChunkFn:
    """``(alpha kd + (1 - alpha) ce, kd, ce)`` of rows and the gradient of the first."""

    def chunk(z: torch.Tensor, start: int, end: int, need_grad: bool):
        t_chunk = teacher(start, end)
        tgt = targets[start:end]
        closed_form = not isinstance(t_chunk, TopK) and (
            spec.kind == "forward_kl" or (spec.kind == "jsd" and spec.beta == 0.0))
        if closed_form:
            kd, ce, gz = _forward_kl_chunk(z, t_chunk, tgt, spec)
        else:
            gz = None
            z.requires_grad_(need_grad)
            with torch.enable_grad():
                kd, ce = kd_chunk_sums(z, t_chunk, tgt, spec)
                if need_grad:
                    (gz,) = torch.autograd.grad(spec.alpha * kd + (1.0 - spec.alpha) * ce, z)
            kd, ce = kd.detach(), ce.detach()
        return torch.stack([spec.alpha * kd + (1.0 - spec.alpha) * ce, kd, ce]), gz

    return chunk


def _check_spec(spec: KDSpec) -> None:
    if not 0.0 <= spec.alpha <= 1.0:
        raise ValueError(f"kd_alpha must be in [0, 1], got {spec.alpha}")
    if spec.chunk_size < 1:
        raise ValueError(f"kd_chunk_size must be >= 1, got {spec.chunk_size}")
    if spec.temperature <= 0:
        raise ValueError(f"kd_temperature must be > 0, got {spec.temperature}")


def fused_linear_kd(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, teacher: TeacherChunk,
                    spec: KDSpec, bias: torch.Tensor | None = None) -> KDSums:
    """KD + CE from the student's final hidden states ``[n, H]`` of TRAINED tokens and ``lm_head``.

    ``weight [V, H]`` must already be cut to the real vocabulary; ``targets [n]`` are the next
    tokens; ``teacher(start, end)`` returns the teacher for rows ``start:end`` (full logits, which
    may be wider than ``V``, or a :class:`TopK`). Peak extra memory is a few ``chunk_size x V``
    fp32 buffers plus gradient buffers the size of ``hidden`` and ``weight``.
    """
    _check_spec(spec)
    n = torch.tensor(hidden.shape[0], device=hidden.device)
    if hidden.shape[0] == 0:
        zero = (hidden.sum() * 0.0 + weight.sum() * 0.0).float()
        return KDSums(zero, zero.detach(), zero.detach(), n)
    totals = _fused_linear(hidden, weight, bias, _kd_chunk(targets, teacher, spec), spec.chunk_size, 3)
    return KDSums(totals[0], totals[1], totals[2], n)


def chunked_kd_from_logits(student_logits: torch.Tensor, teacher: TeacherChunk, targets: torch.Tensor,
                           spec: KDSpec) -> KDSums:
    """KD + CE from student logits ``[n, V]`` of trained tokens, fp32 work done per chunk.

    Each chunk runs under ``torch.utils.checkpoint`` so the fp32 log-softmax buffers of a chunk are
    freed after forward and recomputed in backward; only the (model-dtype) logits stay alive.
    """
    from torch.utils.checkpoint import checkpoint

    _check_spec(spec)
    n = torch.tensor(student_logits.shape[0], device=student_logits.device)
    kd_total = student_logits.new_zeros((), dtype=torch.float32)
    ce_total = student_logits.new_zeros((), dtype=torch.float32)
    loss = student_logits.sum() * 0.0
    for start in range(0, student_logits.shape[0], spec.chunk_size):
        end = min(start + spec.chunk_size, student_logits.shape[0])
        t = teacher(start, end)

        def chunk(z, _t=t, _s=start, _e=end):
            kd, ce = kd_chunk_sums(z, _t, targets[_s:_e], spec)
            return torch.stack([kd, ce])

        parts = checkpoint(chunk, student_logits[start:end], use_reentrant=False)
        loss = loss + spec.alpha * parts[0] + (1.0 - spec.alpha) * parts[1]
        kd_total += parts[0].detach()
        ce_total += parts[1].detach()
    return KDSums(loss.float(), kd_total, ce_total, n)


def naive_kd_from_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                         spec: KDSpec, ignore_index: int = IGNORE_INDEX) -> KDSums:
    """The unchunked reference: full fp32 softmax over every position at once (tests, benchmark)."""
    kd = kd_divergence(student_logits, teacher_logits, labels, spec.temperature, ignore_index, spec.kind, spec.beta)
    ce = cross_entropy_sum(student_logits, labels, ignore_index)
    return KDSums(spec.alpha * kd.loss_sum + (1.0 - spec.alpha) * ce.loss_sum, kd.loss_sum.detach(),
                  ce.loss_sum.detach(), kd.num_tokens)
