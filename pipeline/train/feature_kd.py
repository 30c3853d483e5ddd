"""Feature distillation for ``distill kd``: the ``features:`` config block, the layer plan, and the
loss term :class:`FeatureTerm` that ``KDLoss`` adds to the logit KD + CE loss.

``features.weight x sum_l layer_weight_l x sum over trained tokens of d_l`` is added to the loss
sum (``d`` = MSE or cosine, :mod:`pipeline.train.feature_losses`). The student's features at the
mapped layers go through a learned projection (student width -> teacher width) that trains with
the student (the loop's ``extra_trainable`` module: in the optimizer, clipped, checkpointed, never
in ``final/``). Teacher features come from the live teacher's forward (the same one that gives
its logits) or from ``teacher_cache`` (``feat-*.bin``, written by ``distill kd cache``).

With ``attention_weight > 0`` the term also aligns attention maps (MiniLM):
``attention_weight x sum_l layer_weight_l x sum over trained rows of mean_h KL(teacher || student)``
(:func:`~pipeline.train.feature_losses.attention_kl_sums`) over the layer map's pairs of decoder
layers (index ``i >= 1`` = decoder layer ``i``'s attention; pairs with index 0, the embeddings,
have no attention and are left out of this part). Refused at plan time unless the teacher's
attention heads equal the student's or are a multiple of them (grouped by averaging). The maps
come from ``output_attentions``, which only ``eager`` attention returns: both models then run
eager (``attn_implementation: auto`` picks it; any other explicit choice is refused), and the
maps are ``O(T^2)`` per head, so they are never cached: ``teacher_cache`` is refused with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from pipeline.config import ConfigError, Section

__all__ = ["FeatureKDConfig", "FeaturePlan", "model_shape", "attention_heads", "plan_features", "FeatureTerm"]


class FeatureKDConfig(Section):
    """``features:`` of ``distill kd``: distil hidden states at mapped layers (off when absent)."""

    layer_map: dict[int, int] | None = Field(
        None, description="teacher layer -> student layer (0 = embeddings, i = output of decoder layer i, the "
                          "last = final normed state); default: num_layers pairs at evenly spaced depths")
    num_layers: int = Field(4, gt=0, description="pairs in the default evenly spaced map")
    loss: Literal["mse", "cosine"] = Field("mse", description="per-token distance of projected student vs teacher")
    normalize: bool = Field(True, description="layer-norm both features (no affine) before the distance")
    weight: float = Field(1.0, ge=0.0, description="multiplier of the feature term in the loss")
    layer_weights: list[float] | None = Field(None, description="one weight per mapped pair, in map order "
                                                                "(default 1 each)")
    cache_dtype: Literal["float16", "float32"] = Field("float16", description="on-disk dtype of cached features")
    cache_max_gb: float = Field(20.0, gt=0, description="refuse to write a feature cache larger than this")
    attention_weight: float = Field(
        0.0, ge=0.0, description="0 = off; else also align attention maps: KL(teacher || student) per trained "
                                 "query row, head-mean, at the map's pairs of decoder layers (index 0 skipped), "
                                 "layer_weights apply; teacher heads = student heads or a multiple (averaged in "
                                 "groups); runs both models with eager attention; live teacher only")

    @property
    def attention(self) -> bool:
        """Attention-map alignment is on."""
        return self.attention_weight > 0


@dataclass(frozen=True)
class FeaturePlan:
    """The resolved map: teacher/student layer pairs in order, their weights, both widths; with
    attention alignment, the pairs of decoder layers it uses (hidden-state indices) and their weights."""

    teacher_layers: list[int]
    student_layers: list[int]
    weights: list[float]
    student_width: int
    teacher_width: int
    attention_pairs: list[tuple[int, int]] = field(default_factory=list)
    attention_weights: list[float] = field(default_factory=list)


def model_shape(path: str) -> tuple[int, int]:
    """``(num_hidden_layers, hidden_size)`` from a model's config.json (no weights loaded)."""
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(path)
    except OSError as exc:
        raise ConfigError(f"model {path!r}: cannot read its config ({exc})") from None
    return int(conf.num_hidden_layers), int(conf.hidden_size)


def attention_heads(path: str) -> int:
    """``num_attention_heads`` (query heads: what ``output_attentions`` maps have) from config.json."""
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(path).num_attention_heads)
    except OSError as exc:
        raise ConfigError(f"model {path!r}: cannot read its config ({exc})") from None


def plan_features(fcfg: FeatureKDConfig, student: tuple[int, int], teacher: tuple[int, int],
                  heads: tuple[int, int] | None = None) -> FeaturePlan:
    """Resolve ``fcfg`` for a student and teacher of shapes ``(layers, width)`` (and, for attention
    alignment, ``heads = (student heads, teacher heads)``); errors name the key."""
    from pipeline.train.feature_losses import evenly_spaced_layers

    (s_layers, s_width), (t_layers, t_width) = student, teacher
    mapping = fcfg.layer_map or evenly_spaced_layers(s_layers, t_layers, fcfg.num_layers)
    for t, s in mapping.items():
        if not (0 <= t <= t_layers and 0 <= s <= s_layers):
            raise ConfigError(f"features.layer_map: {t}: {s} is out of range (teacher layers 0..{t_layers}, "
                              f"student layers 0..{s_layers})")
    weights = fcfg.layer_weights if fcfg.layer_weights is not None else [1.0] * len(mapping)
    if len(weights) != len(mapping):
        raise ConfigError(f"features.layer_weights: {len(weights)} weights for {len(mapping)} mapped layers "
                          f"{dict(mapping)}")
    pairs, a_weights = [], []
    if fcfg.attention:
        if heads is None:
            raise ConfigError("features.attention_weight: the models' attention head counts are unknown here")
        s_heads, t_heads = heads
        if t_heads % s_heads:
            raise ConfigError(f"features.attention_weight: teacher has {t_heads} attention heads, student "
                              f"{s_heads}; attention alignment needs equal counts or teacher heads a multiple of "
                              "the student's (set features.attention_weight: 0)")
        kept = [(t, s, w) for (t, s), w in zip(mapping.items(), weights) if t >= 1 and s >= 1]
        if not kept:
            raise ConfigError(f"features.attention_weight: layer map {dict(mapping)} has no pair of decoder layers "
                              "(index 0 = embeddings has no attention)")
        pairs, a_weights = [(t, s) for t, s, _ in kept], [w for _, _, w in kept]
    return FeaturePlan(list(mapping), list(mapping.values()), list(weights), s_width, t_width, pairs, a_weights)


class FeatureTerm:
    """The feature part of one micro-batch's loss; ``projector`` is a
    :class:`~pipeline.train.feature_losses.FeatureProjector` trained with the student."""

    def __init__(self, fcfg: FeatureKDConfig, plan: FeaturePlan, projector: Any, cache: Any = None):
        self.fcfg, self.plan, self.projector, self.cache = fcfg, plan, projector, cache

    def student_rows(self, hidden_states: tuple, labels: Any) -> list:
        from pipeline.train.feature_losses import trained_rows

        return [trained_rows(hidden_states[s], labels) for s in self.plan.student_layers]

    def teacher_rows(self, batch: dict, hidden_states: tuple | None) -> list:
        """Teacher features of the trained tokens: from its forward's ``hidden_states`` or the cache."""
        from pipeline.train.feature_losses import trained_rows

        dev = batch["input_ids"].device
        if self.cache is None:
            labels = batch["labels"].to(hidden_states[0].device)
            return [trained_rows(hidden_states[t], labels).to(dev) for t in self.plan.teacher_layers]
        rows = self.cache.rows([k for row in batch["sample_keys"] for k in row]).to(dev)
        return [rows[:, i] for i in range(rows.shape[1])]

    def __call__(self, student: list, teacher: list) -> tuple[Any, dict[str, Any]]:
        """``(weight x weighted sum, parts)``; parts: ``feat`` and one unweighted sum per pair."""
        from pipeline.train.feature_losses import feature_loss_sums

        if student and teacher and student[0].shape[0] != teacher[0].shape[0]:
            raise RuntimeError(f"teacher features for {teacher[0].shape[0]} tokens, student trains "
                               f"{student[0].shape[0]}; rebuild the teacher_cache for this data")
        total, sums = feature_loss_sums(student, teacher, self.projector, self.plan.weights, self.fcfg.loss,
                                        self.fcfg.normalize)
        parts = {"feat": total.detach()}
        for t, s, v in zip(self.plan.teacher_layers, self.plan.student_layers, sums):
            parts[f"feat_t{t}_s{s}"] = v.detach()
        return self.fcfg.weight * total, parts

    def attention(self, student_maps: tuple, teacher_maps: tuple, labels: Any) -> tuple[Any, dict[str, Any]]:
        """``(attention_weight x weighted KL sum, parts)`` from both models' ``output_attentions``
        tuples (one ``[B, H, T, T]`` map per decoder layer); parts: ``attn`` and one unweighted sum
        per pair."""
        from pipeline.train.feature_losses import attention_kl_sums

        if student_maps is None or teacher_maps is None or any(a is None for a in (*student_maps, *teacher_maps)):
            raise RuntimeError("features.attention_weight: a model returned no attention maps (it does not run "
                               "eager attention)")
        pairs = self.plan.attention_pairs
        total, sums = attention_kl_sums([student_maps[s - 1] for _, s in pairs],
                                        [teacher_maps[t - 1] for t, _ in pairs], labels,
                                        self.plan.attention_weights)
        parts = {"attn": total.detach()}
        for (t, s), v in zip(pairs, sums):
            parts[f"attn_t{t}_s{s}"] = v.detach()
        return self.fcfg.attention_weight * total, parts
