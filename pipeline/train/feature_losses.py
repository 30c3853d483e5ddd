"""Feature distillation: the student's hidden states, projected to the teacher's width, pulled
toward the teacher's at mapped layers. Small pure functions returning SUMS over trained tokens
(the loop divides by the step's trained tokens, like every other loss; see :mod:`losses`).

Layers are numbered like ``output_hidden_states``: ``0`` = the embeddings, ``i`` = the output of
decoder layer ``i``, ``num_layers`` = the final (normed) hidden state. A layer map is
``{teacher_layer: student_layer}``; :func:`evenly_spaced_layers` pairs layers at the same
relative depth (teacher 28 layers, student 24, 4 pairs: ``{7: 6, 14: 12, 21: 18, 28: 24}``).

Per mapped layer ``l`` and trained token ``n`` (the hidden state at position ``t`` that predicts
the trained label at ``t + 1``, the same rows the logit loss uses), with ``p = W_l s`` the
student feature through a learned linear map ``W_l`` (student width -> teacher width, no bias)
and ``t`` the teacher feature, both optionally layer-normed (no affine; ``normalize``, default on:
raw residual streams carry a few huge outlier dimensions that would swamp an MSE):

* ``mse``:    ``mean_h (p_h - t_h)^2``
* ``cosine``: ``1 - cos(p, t)``

and the feature loss is ``sum_l weight_l * sum_n d_l(n)``. The projections (:class:`FeatureProjector`)
train with the student and are not part of the saved model.

Attention maps (MiniLM-style, optional): for a mapped pair of DECODER layers (hidden-state index
``i >= 1`` is the output of decoder layer ``i``, whose attention is ``attentions[i - 1]``), per
trained query row ``n`` (the same rows as above) and student head ``h``,
``KL(a^T_{n,h} || a^S_{n,h}) = sum_k a^T log a^T - a^T log a^S`` over the keys ``k``, averaged over
heads and summed over rows (:func:`attention_kl_sums`). Teacher heads that are a multiple of the
student's are averaged in consecutive groups (``teacher_heads / student_heads`` each)
(:func:`group_heads`). Keys the models mask (padding, other documents of a packed row, the
future) have teacher probability exactly 0 and add exactly 0 (``xlogy``); the student's
probabilities are clamped at ``eps`` inside the log only, so an underflowed 0 cannot give inf.
All in fp32.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["FeatureKind", "evenly_spaced_layers", "trained_rows", "feature_distance", "FeatureProjector",
           "feature_loss_sums", "attention_rows", "group_heads", "attention_kl", "attention_kl_sums"]

FeatureKind = Literal["mse", "cosine"]


def evenly_spaced_layers(student_layers: int, teacher_layers: int, count: int) -> dict[int, int]:
    """``count`` pairs ``{teacher_layer: student_layer}`` at depths ``i / count`` (i = 1..count); the
    last pair maps the final hidden states. ``count`` is capped by the shallower model."""
    k = max(1, min(count, student_layers, teacher_layers))
    return {round(i * teacher_layers / k): round(i * student_layers / k) for i in range(1, k + 1)}


def trained_rows(hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``[N, H]``: the hidden states ``[B, T, H]`` at positions whose NEXT label is trained, row-major
    (HF convention: position ``t`` predicts ``labels[:, t + 1]``)."""
    return hidden[:, :-1][labels[:, 1:] != ignore_index]


def feature_distance(projected: torch.Tensor, target: torch.Tensor, kind: FeatureKind = "mse",
                     normalize: bool = True) -> torch.Tensor:
    """``[N]``: per-row distance between ``projected`` and ``target`` ``[N, H]``, computed in fp32."""
    p, t = projected.float(), target.float()
    if normalize:
        p = F.layer_norm(p, p.shape[-1:])
        t = F.layer_norm(t, t.shape[-1:])
    if kind == "mse":
        return (p - t).pow(2).mean(-1)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(p, t, dim=-1, eps=1e-8)
    raise ValueError(f"feature loss kind {kind!r}: expected 'mse' or 'cosine'")


class FeatureProjector(torch.nn.Module):
    """One bias-free linear map student width -> teacher width per mapped layer (in map order)."""

    def __init__(self, student_width: int, teacher_width: int, num_maps: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.maps = torch.nn.ModuleList(torch.nn.Linear(student_width, teacher_width, bias=False)
                                        for _ in range(num_maps))
        with torch.no_grad():  # explicit seed: the same init in every process and on resume
            for m in self.maps:
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / student_width ** 0.5)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.maps):
            raise ValueError(f"{len(features)} student features for {len(self.maps)} projections")
        return [m(f.to(m.weight.dtype)) for m, f in zip(self.maps, features)]


def feature_loss_sums(student: list[torch.Tensor], teacher: list[torch.Tensor], projector: FeatureProjector,
                      weights: list[float], kind: FeatureKind = "mse",
                      normalize: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(weighted total, per-layer unweighted sums)`` over the rows of each ``[N, H]`` pair."""
    if not (len(student) == len(teacher) == len(weights)):
        raise ValueError(f"{len(student)} student / {len(teacher)} teacher features / {len(weights)} weights")
    projected = projector(student)
    sums = [feature_distance(p, t.to(p.device), kind, normalize).sum() for p, t in zip(projected, teacher)]
    total = sum((w * s for w, s in zip(weights, sums)), torch.zeros((), device=projected[0].device))
    return total, sums


def attention_rows(attn: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``[N, H, T]``: the query rows of an attention map ``[B, H, T, T]`` at positions whose NEXT
    label is trained (the rows of :func:`trained_rows`), each a distribution over the ``T`` keys."""
    return attn[:, :, :-1].transpose(1, 2)[labels[:, 1:] != ignore_index]


def group_heads(attn: torch.Tensor, heads: int) -> torch.Tensor:
    """``[N, heads, T]``: ``attn [N, H, T]`` with consecutive groups of ``H / heads`` heads averaged
    (the identity when ``H == heads``); an average of distributions is a distribution."""
    n, h, t = attn.shape
    if h == heads:
        return attn
    if h % heads:
        raise ValueError(f"{h} teacher attention heads do not group into {heads} student heads")
    return attn.reshape(n, heads, h // heads, t).mean(2)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``[N]``: ``mean_h KL(teacher_h || student_h)`` per row of ``student [N, Hs, T]`` and
    ``teacher [N, Ht, T]`` (probabilities; teacher heads grouped to ``Hs``), in fp32."""
    s = student.float()
    t = group_heads(teacher.float(), s.shape[1])
    return (torch.xlogy(t, t) - torch.xlogy(t, s.clamp_min(eps))).sum(-1).mean(-1)


def attention_kl_sums(student: list[torch.Tensor], teacher: list[torch.Tensor], labels: torch.Tensor,
                      weights: list[float], ignore_index: int = -100) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(weighted total, per-pair unweighted sums)`` of :func:`attention_kl` over the trained rows of
    each pair of attention maps ``[B, H, T, T]`` (rows are picked on each map's own device; the
    teacher's move to the student's)."""
    if not (len(student) == len(teacher) == len(weights)) or not student:
        raise ValueError(f"{len(student)} student / {len(teacher)} teacher attention maps / {len(weights)} weights")
    sums = []
    for s, t in zip(student, teacher):
        s_rows = attention_rows(s, labels.to(s.device), ignore_index)
        t_rows = attention_rows(t, labels.to(t.device), ignore_index).to(s.device)
        sums.append(attention_kl(s_rows, t_rows).sum())
    total = sum((w * v for w, v in zip(weights, sums)), torch.zeros((), device=sums[0].device))
    return total, sums
