"""``distill kd``: white-box distillation on teacher logits, on the SFT data path and training loop.

The student trains on ``kd_alpha * T^2 * D(teacher || student) + (1 - kd_alpha) * CE`` summed
over trained tokens (the loop normalises by the trained tokens of the whole optimizer step);
``D`` is ``kd_loss``: forward_kl (Hinton), reverse_kl, or jsd with ``kd_beta`` (see
:mod:`pipeline.train.losses`). The metrics log ``kd`` and ``ce`` per trained token separately.

Teacher: frozen, eval mode, no grad; loaded on ``teacher_device`` (default: the student's device)
in ``teacher_dtype``. Its vocabulary must equal the student's (:mod:`pipeline.train.tokenizer_check`);
padded embedding rows are cut away. Or train from an offline top-k cache (``teacher_cache``)::

    distill kd cache --config configs/kd/tiny_cpu.yaml    # run the teacher once, write teacher_cache/
    distill kd --config configs/kd/tiny_cpu.yaml          # train (reads the cache if teacher_cache is set
                                                          # and complete; otherwise runs the teacher live)

Beyond output logits (each a config block; see the README's "which tool when"):
``features:`` adds hidden-state distillation at mapped layers through learned projections
(:mod:`pipeline.train.feature_kd`; with ``features.attention_weight`` also attention maps, KL per
trained query row, both models on eager attention, live teacher only); ``on_policy:`` trains a
``lmbda`` share of micro-batches on the student's own samples scored by the teacher (GKD,
:mod:`pipeline.train.on_policy`). Before anything loads, ``memory_check`` estimates the run's
memory and stops with a suggestion when it will not fit (:mod:`pipeline.train.memory_plan`). The
stage adds its fields to ``summary.json`` through the loop's ``summary_extra`` hook.

Memory: with ``kd_fused`` (default) neither model materialises full-vocabulary logits for the
sequence: the loss takes both models' final hidden states of trained tokens and their ``lm_head``
weights and works ``kd_chunk_size`` tokens at a time (``losses.fused_linear_kd``). Where the
weights are sharded (FSDP, DeepSpeed ZeRO-3) the models produce logits for trained positions only
and the fp32 work is chunked (``losses.chunked_kd_from_logits``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.cliutil import add_stage_action, add_stage_parser, config_from_args
from pipeline.config import ConfigError, Section
from pipeline.train.config import TrainConfig
from pipeline.train.feature_kd import FeatureKDConfig
from pipeline.train.on_policy import OnPolicyConfig
from pipeline.train.models import forward_states, load_teacher

__all__ = ["KDConfig", "TopKCacheConfig", "run", "build_teacher_cache", "register"]

log = logging.getLogger(__name__)


class TopKCacheConfig(Section):
    """``distill kd cache`` settings (the folder is ``teacher_cache``)."""

    k: int = Field(64, gt=0, description="teacher log-probs kept per trained token (plus one 'rest' bucket)")
    logprob_dtype: Literal["float16", "float32"] = Field("float16", description="on-disk dtype of the log-probs")
    batch_size: int = Field(8, gt=0, description="samples per teacher forward pass")


class KDConfig(TrainConfig):
    """``distill kd`` settings: the shared training settings plus the teacher and the KD loss."""

    teacher: str | None = Field(None, description="teacher model folder or hub name (same tokenizer as the student); "
                                                  "not needed when training from a complete teacher_cache")
    teacher_device: str | None = Field(None, description="device for the teacher, e.g. 'cuda:1' (default: the "
                                                          "student's device)")
    teacher_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="teacher weights dtype: auto = bf16 on GPU, fp32 on CPU")
    teacher_shard: bool = Field(False, description="FSDP runs: shard the teacher with the same Accelerate/FSDP "
                                                   "config as the student (else a full copy per process)")
    kd_loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="divergence: forward_kl = KL(teacher||student), reverse_kl, or generalized jsd")
    kd_beta: float = Field(0.5, ge=0.0, le=1.0, description="jsd mixture weight (0 = forward KL, 1 = reverse KL)")
    kd_temperature: float = Field(1.0, gt=0.0, description="softmax temperature of both distributions (loss x T^2)")
    kd_alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the KD term; cross-entropy gets 1 - kd_alpha")
    kd_chunk_size: int = Field(1024, gt=0, description="trained tokens whose full-vocabulary logits exist at once")
    kd_fused: bool = Field(True, description="loss from hidden states + lm_head chunk by chunk (no full logits); "
                                             "switched off automatically when weights are sharded")
    teacher_cache: str | None = Field(None, description="folder of `distill kd cache` (top-k teacher log-probs); "
                                                        "used for training when complete")
    cache: TopKCacheConfig = Field(default_factory=TopKCacheConfig, description="top-k cache settings")
    memory_check: bool = Field(True, description="estimate teacher + student + optimizer + activations before "
                                                 "loading and stop with a suggestion when over 90% of the budget")
    memory_budget_gb: float | None = Field(None, gt=0, description="memory budget for memory_check (default: the "
                                                                   "CUDA device's memory, or available RAM on CPU)")
    on_policy: OnPolicyConfig | None = Field(None, description="GKD: the student samples its own sequences for a "
                                                               "lmbda share of micro-batches and the teacher scores "
                                                               "them (live teacher; off when unset)")
    features: FeatureKDConfig | None = Field(None, description="feature distillation: hidden states at mapped "
                                                               "layers through learned projections (off when unset)")

    @model_validator(mode="after")
    def _needs_a_teacher(self) -> "KDConfig":
        if not self.teacher and not self.teacher_cache:
            raise ValueError("set teacher (a model) or teacher_cache (a `distill kd cache` folder)")
        if self.on_policy is not None and not self.teacher:
            raise ValueError("on_policy: needs teacher (a model): the teacher scores the student's own samples")
        return self


# --------------------------------------------------------------------------- the loss

class KDLoss:
    """``loss_fn(model, batch) -> LossOutput`` for the shared loop (live teacher or top-k cache);
    with ``features`` (a :class:`~pipeline.train.feature_kd.FeatureTerm`) plus the feature term."""

    def __init__(self, cfg: KDConfig, accelerator, tokenizer, corpus, teacher=None, cache=None, vocab_size=None,
                 features=None):
        from pipeline.train.losses import KDSpec
        from pipeline.train.models import weights_sharded

        self.cfg, self.accelerator, self.teacher, self.cache = cfg, accelerator, teacher, cache
        self.features = features
        self.vocab = vocab_size or len(tokenizer)
        self.spec = KDSpec(kind=cfg.kd_loss, beta=cfg.kd_beta, temperature=cfg.kd_temperature, alpha=cfg.kd_alpha,
                           chunk_size=cfg.kd_chunk_size)
        self.fused = cfg.kd_fused and not weights_sharded(accelerator)
        self.attention = features is not None and features.fcfg.attention
        self._attn_kwargs = {"output_attentions": True} if self.attention else {}
        if self.attention and cache is not None:
            raise ConfigError("features.attention_weight: attention alignment needs the live teacher, not "
                              "teacher_cache")

    def _teacher_rows(self, batch: dict, mask):
        """``(teacher(start, end)`` over the batch's trained tokens (row-major), the live teacher's
        forward output (``hidden_states`` per layer, ``attentions`` when aligned) or None)."""
        import torch
        import torch.nn.functional as F

        from pipeline.train.data import model_inputs

        dev = batch["input_ids"].device
        if self.cache is not None:
            keys = [k for row in batch["sample_keys"] for k in row]
            top = self.cache.rows(keys)
            if top.ids.shape[0] != int(mask.sum()):
                raise RuntimeError(f"teacher_cache rows ({top.ids.shape[0]}) != trained tokens in the batch "
                                   f"({int(mask.sum())}); rebuild the cache for this data")
            from pipeline.train.losses import TopK

            return (lambda a, b: TopK(top.ids[a:b].to(dev), top.logprobs[a:b].to(dev))), None
        t_dev = next(self.teacher.parameters()).device
        t_batch = {k: (v.to(t_dev) if hasattr(v, "to") else v) for k, v in batch.items()}
        with torch.no_grad():
            if self.fused:
                out = forward_states(self.teacher, t_batch, attentions=self.attention)
                hidden = out.hidden_states[-1][:, :-1][mask.to(t_dev)]
                head = self.teacher.get_output_embeddings()
                weight = head.weight[: self.vocab]
                bias = None if getattr(head, "bias", None) is None else head.bias[: self.vocab]

                def rows(a, b):
                    with torch.no_grad():
                        return F.linear(hidden[a:b], weight, bias).to(dev)

                return rows, out
            from pipeline.train.data import next_token_targets
            from pipeline.train.losses import IGNORE_INDEX

            positions, targets = next_token_targets(t_batch)
            out = self.teacher(**model_inputs(t_batch), logits_to_keep=positions,
                               output_hidden_states=self.features is not None, **self._attn_kwargs)
            logits = out.logits[targets != IGNORE_INDEX][:, : self.vocab]
            return (lambda a, b: logits[a:b].to(dev)), out

    def __call__(self, model, batch: dict):
        from pipeline.train.data import model_inputs, next_token_targets
        from pipeline.train.loop import LossOutput
        from pipeline.train.losses import IGNORE_INDEX, chunked_kd_from_logits, fused_linear_kd
        from pipeline.train.models import output_head

        nxt = batch["labels"][:, 1:]
        mask = nxt != IGNORE_INDEX
        targets = nxt[mask]
        teacher, t_out = self._teacher_rows(batch, mask)
        if self.fused:
            out = forward_states(model, batch, attentions=self.attention)
            hidden = out.hidden_states[-1][:, :-1][mask]
            weight, bias = output_head(self.accelerator, model)
            bias = None if bias is None else bias[: self.vocab]
            sums = fused_linear_kd(hidden, weight[: self.vocab], targets, teacher, self.spec, bias=bias)
        else:
            positions, pos_targets = next_token_targets(batch)
            out = model(**model_inputs(batch), logits_to_keep=positions, output_hidden_states=self.features is not None,
                        **self._attn_kwargs)
            rows = out.logits[pos_targets != IGNORE_INDEX][:, : self.vocab]
            sums = chunked_kd_from_logits(rows, teacher, targets, self.spec)
        loss, parts = sums.loss_sum, {"kd": sums.kd_sum, "ce": sums.ce_sum}
        if self.features is not None:
            term, feat_parts = self.features(self.features.student_rows(out.hidden_states, batch["labels"]),
                                             self.features.teacher_rows(batch, None if t_out is None
                                                                        else t_out.hidden_states))
            loss = loss + term
            parts.update(feat_parts)
            if self.attention:
                term, attn_parts = self.features.attention(out.attentions, t_out.attentions, batch["labels"])
                loss = loss + term
                parts.update(attn_parts)
        return LossOutput(loss_sum=loss, num_tokens=sums.num_tokens, parts=parts)


def _cache_ready(cfg: KDConfig) -> bool:
    """Train from the top-k cache: it is complete and the teacher need not score new sequences."""
    if cfg.on_policy is not None or not cfg.teacher_cache:
        return False
    path = Path(cfg.teacher_cache) / "summary.json"
    return path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("complete", False)


def _feature_setup(cfg: KDConfig) -> tuple[Any, Any] | None:
    """``(FeaturePlan, FeatureProjector)`` for ``features:`` (None when off), from config.json shapes
    (or the cache's manifest when training from a complete teacher_cache)."""
    from pipeline.train.feature_kd import attention_heads, model_shape, plan_features
    from pipeline.train.feature_losses import FeatureProjector

    if cfg.features is None:
        return None
    student = model_shape(cfg.model)
    if _cache_ready(cfg):
        path = Path(cfg.teacher_cache) / "manifest.json"
        m = json.loads(path.read_text(encoding="utf-8"))
        if not m.get("feature_layers"):
            raise ConfigError(f"{path}: features: is set but this teacher_cache holds no features; rebuild it with "
                              "`distill kd cache` (features set) or drop teacher_cache to use the live teacher")
        plan = plan_features(cfg.features, student, (int(m["teacher_num_layers"]), int(m["feature_width"])))
        if plan.teacher_layers != list(m["feature_layers"]):
            raise ConfigError(f"{path}: cache holds teacher layers {m['feature_layers']}, features: maps "
                              f"{plan.teacher_layers}; rebuild the cache or use the same layer_map")
    else:
        heads = (attention_heads(cfg.model), attention_heads(cfg.teacher)) if cfg.features.attention else None
        plan = plan_features(cfg.features, student, model_shape(cfg.teacher), heads)
    projector = FeatureProjector(plan.student_width, plan.teacher_width, len(plan.teacher_layers), seed=cfg.seed)
    return plan, projector


def _feature_term(cfg: KDConfig, features: tuple[Any, Any] | None, corpus: Any, cached: bool, info: dict):
    from pipeline.train.feature_kd import FeatureTerm
    from pipeline.train.kd_cache import FeatureCache

    if features is None:
        return None
    plan, projector = features
    cache = None
    if cached:
        cache = FeatureCache(cfg.teacher_cache)
        cache.store.check_corpus(corpus, "teacher_cache features")
    info.update(feature_layer_map=dict(zip(plan.teacher_layers, plan.student_layers)),
                feature_layer_weights=plan.weights, feature_loss=cfg.features.loss,
                feature_weight=cfg.features.weight, projection_params=sum(p.numel() for p in projector.parameters()))
    if cfg.features.attention:
        info.update(attention_layer_map=dict(plan.attention_pairs), attention_weight=cfg.features.attention_weight)
    return FeatureTerm(cfg.features, plan, projector, cache)


def _on_policy_loss(cfg: KDConfig, ctx: Any, off: KDLoss, teacher: Any, vocab: int, info: dict):
    """GKD: ``off`` on data micro-batches, JSD(beta) without CE on the student's own samples otherwise."""
    from pipeline.train.models import weights_sharded
    from pipeline.train.on_policy import OnPolicyLoss

    if weights_sharded(ctx.accelerator):
        raise ConfigError("on_policy: the student samples with its whole weights; not with FSDP/ZeRO-3 sharding")
    opc = cfg.on_policy
    on_cfg = cfg.model_copy(update={"kd_loss": "jsd", "kd_beta": opc.beta, "kd_alpha": 1.0})
    on = KDLoss(on_cfg, ctx.accelerator, ctx.tokenizer, ctx.corpus, teacher=teacher, vocab_size=vocab)
    info.update(on_policy=opc.model_dump())
    return OnPolicyLoss(cfg, ctx.accelerator, off, on, ctx.corpus.stop_ids, ctx.tokenizer.pad_token_id)


def _make_loss_factory(cfg: KDConfig, info: dict, features: tuple[Any, Any] | None = None):
    def make_loss(ctx) -> KDLoss:
        import torch

        from pipeline.train.kd_cache import TopKCache
        from pipeline.train.models import weights_sharded
        from pipeline.train.tokenizer_check import check_vocab

        student_rows = ctx.accelerator.unwrap_model(ctx.model).get_output_embeddings().weight.shape[0]
        if _cache_ready(cfg):
            cache = TopKCache(cfg.teacher_cache)
            vocab = len(ctx.tokenizer)
            if student_rows < vocab:
                raise ConfigError(f"student lm_head has {student_rows} rows < tokenizer size {vocab}")
            cache.validate(ctx.corpus, cfg.kd_temperature, vocab)
            info.update(teacher_source="cache", teacher_cache=str(cfg.teacher_cache), cache_k=cache.k)
            term = _feature_term(cfg, features, ctx.corpus, True, info)
            return KDLoss(cfg, ctx.accelerator, ctx.tokenizer, ctx.corpus, cache=cache, vocab_size=vocab,
                          features=term)
        if cfg.teacher_cache:
            log.warning("teacher_cache %s is not complete (run `distill kd cache`); using the live teacher",
                        cfg.teacher_cache)
        device = torch.device(cfg.teacher_device) if cfg.teacher_device else ctx.accelerator.device
        teacher, t_tok = load_teacher(cfg, device, "eager" if _attention(cfg) else None)
        check = check_vocab(t_tok, ctx.tokenizer, teacher.get_output_embeddings().weight.shape[0], student_rows)
        for w in check.warnings:
            log.warning("kd: %s", w)
        if cfg.teacher_shard and weights_sharded(ctx.accelerator):
            teacher = ctx.accelerator.prepare_model(teacher)
            teacher.eval()
        info.update(teacher_source="model", teacher=str(cfg.teacher), vocab_size=check.vocab_size,
                    student_rows=student_rows, teacher_rows=check.teacher_rows, tokenizer_warnings=check.warnings)
        loss = KDLoss(cfg, ctx.accelerator, ctx.tokenizer, ctx.corpus, teacher=teacher, vocab_size=check.vocab_size,
                      features=_feature_term(cfg, features, ctx.corpus, False, info))
        info["fused"] = loss.fused
        return loss if cfg.on_policy is None else _on_policy_loss(cfg, ctx, loss, teacher, check.vocab_size, info)

    return make_loss


def run(cfg: KDConfig) -> dict:
    """Train the student by distillation; return the loop's summary plus the KD settings used."""
    from pipeline.errors import storage_errors
    from pipeline.locking import launcher_output_lock

    cfg = _attention_setup(cfg)
    _check_sources(cfg, teacher_needed=not _cache_ready(cfg))
    with launcher_output_lock(cfg.output_dir, "distill kd"), storage_errors(cfg.output_dir):
        memory = _memory_plan(cfg)  # after the lock: a busy output is refused before anything is read
        return _train(cfg, memory)


def _attention(cfg: KDConfig) -> bool:
    return cfg.features is not None and cfg.features.attention


def _attention_setup(cfg: KDConfig) -> KDConfig:
    """With attention alignment on: refuse a teacher_cache (maps are not cached) and an attention
    implementation that returns no maps; ``attn_implementation: auto`` becomes ``eager``."""
    if not _attention(cfg):
        return cfg
    if cfg.teacher_cache:
        raise ConfigError("features.attention_weight: attention alignment needs the live teacher (attention maps "
                          "are O(T^2) per head and never cached); unset teacher_cache or set "
                          "features.attention_weight: 0")
    if cfg.attn_implementation not in ("auto", "eager"):
        raise ConfigError(f"attn_implementation: {cfg.attn_implementation!r} returns no attention maps; "
                          "features.attention_weight needs 'eager' (or 'auto', which then picks it)")
    if cfg.attn_implementation == "auto":
        log.info("features.attention_weight: student and teacher run eager attention")
    return cfg.model_copy(update={"attn_implementation": "eager"})


def _memory_plan(cfg: KDConfig) -> dict:
    """:func:`~pipeline.train.memory_plan.plan_or_stop` for this config (before any weights load)."""
    import torch

    from pipeline.train.memory_plan import model_facts, plan_or_stop

    if not cfg.memory_check:
        return {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    same_device = cfg.teacher_device is None or torch.device(cfg.teacher_device).type == device
    teacher = model_facts(cfg.teacher) if cfg.teacher and same_device and not _cache_ready(cfg) else None
    budget = None if cfg.memory_budget_gb is None else int(cfg.memory_budget_gb * 1e9)
    return plan_or_stop(cfg, model_facts(cfg.model), teacher, device, budget)


def _check_sources(cfg: KDConfig, teacher_needed: bool) -> None:
    """Student, tokenizer and (when it will be loaded) teacher folders, before anything is written."""
    from pipeline.modelcheck import check_model_source, check_student

    check_student(cfg.model, cfg.tokenizer)
    if teacher_needed and cfg.teacher:
        check_model_source(cfg.teacher, "teacher")


def _train(cfg: KDConfig, memory: dict) -> dict:
    from pipeline.train.loop import run_training

    info: dict[str, Any] = {"memory_plan": memory}
    features = _feature_setup(cfg)
    return run_training(cfg, _make_loss_factory(cfg, info, features), stage="kd",
                        summary_extra=lambda summary: _summary_fields(cfg, info),
                        extra_trainable=None if features is None else features[1])


def _summary_fields(cfg: KDConfig, info: dict) -> dict:
    """What kd adds to the loop's ``summary.json``: its settings, the teacher source, first/final parts."""
    fields = {"kd_loss": cfg.kd_loss, "kd_beta": cfg.kd_beta, "kd_temperature": cfg.kd_temperature,
              "kd_alpha": cfg.kd_alpha, "kd_chunk_size": cfg.kd_chunk_size, **info}
    metrics = Path(cfg.output_dir) / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if x.strip()] \
        if metrics.exists() else []
    if rows:
        fields.update(final_kd=rows[-1].get("kd"), final_ce=rows[-1].get("ce"), first_kd=rows[0].get("kd"))
        if cfg.features is not None:
            fields.update(first_feat=rows[0].get("feat"), final_feat=rows[-1].get("feat"))
            if cfg.features.attention:
                fields.update(first_attn=rows[0].get("attn"), final_attn=rows[-1].get("attn"))
        _plot_parts(rows, Path(cfg.output_dir) / "kd_parts.png")
    return fields


def _plot_parts(rows: list[dict], png: Path) -> None:
    from pipeline.plots import lines

    series = {name: ([r["step"] for r in rows if name in r], [r[name] for r in rows if name in r])
              for name in ("kd", "ce", "feat", "attn", "loss")}
    lines({k: v for k, v in series.items() if v[0]}, png, title="distill kd: per trained token",
          xlabel="optimizer step", ylabel="value")


def build_teacher_cache(cfg: KDConfig) -> dict:
    """``distill kd cache``: run the teacher once, store top-k log-probs per trained token."""
    from pipeline.errors import storage_errors
    from pipeline.locking import launcher_output_lock
    from pipeline.train.kd_cache import build_cache

    if not cfg.teacher_cache:
        raise ConfigError("teacher_cache: required for `distill kd cache` (the folder to write)")
    _attention_setup(cfg)
    _check_sources(cfg, teacher_needed=True)
    features = _feature_setup(cfg.model_copy(update={"teacher_cache": None})) if cfg.features else None
    with launcher_output_lock(cfg.teacher_cache, "distill kd cache"), storage_errors(cfg.teacher_cache):
        return build_cache(cfg, feature_layers=None if features is None else features[0].teacher_layers)


FLAGS = {
    "--output": ("output_dir", str, "run folder"),
    "--model": ("model", str, "student model folder or hub name"),
    "--teacher": ("teacher", str, "teacher model folder or hub name"),
    "--data": ("data", "list", "chat-format JSONL/Parquet files or folders"),
    "--teacher-cache": ("teacher_cache", str, "top-k teacher cache folder"),
    "--resume": ("resume", "store_true", "continue from the newest checkpoint in the run folder"),
    "--max-steps": ("max_steps", int, "optimizer steps (0 = from epochs)"),
}


def _cache_cmd(args) -> int:
    summary = build_teacher_cache(config_from_args(KDConfig, args, FLAGS))
    print(json.dumps(summary, indent=2))
    return 0 if summary.get("complete") else 1


def _main(args) -> int:
    cfg = config_from_args(KDConfig, args, FLAGS)
    summary = run(cfg)
    print(json.dumps({k: summary.get(k) for k in ("model_dir", "steps", "final_loss", "first_kd", "final_kd",
                                                  "final_ce", "teacher_source", "trained_tokens", "elapsed_s")},
                     indent=2))
    return 0


def register(sub) -> None:
    p = add_stage_parser(
        sub, "kd", KDConfig,
        "White-box distillation on teacher logits (forward/reverse KL, JSD; chunked). "
        "`distill kd cache --config X` first runs the teacher once and stores its top-k log-probs in "
        "teacher_cache (optional); `distill kd --config X` trains (from the cache when it is complete).", FLAGS)
    p.set_defaults(func=_main)
    add_stage_action(p, "cache", "run the teacher once over the training data and write its top-k log-probs to "
                     "teacher_cache, then exit", _cache_cmd, flags=FLAGS)
