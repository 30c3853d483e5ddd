"""Will the teacher fit alongside the student? A memory estimate before anything is loaded.

From each model's ``config.json`` (parameters counted exactly by building the model on the
``meta`` device: shapes only, no memory) and the training config, the planner adds up, in bytes:

* student weights: fp32 master copy (the loop trains fp32 weights under autocast), 4 B/param;
* gradients + AdamW state of the TRAINABLE params: 4 + 8 B/param (LoRA: adapters only);
* teacher weights: ``teacher_dtype`` (auto: bf16 on GPU, fp32 on CPU); 0 when a complete
  ``teacher_cache`` is used (the teacher is never loaded);
* activations of one micro-batch (``micro_batch_size x max_seq_len`` tokens ``n``) kept for backward,
  per student layer ``n x (6 H + 2 kv + 4 I)`` elements (norm inputs, q/k/v, attention output,
  residual, the three SwiGLU products) at the compute width (2 B under bf16/fp16, 4 B in fp32);
  with ``gradient_checkpointing`` only each layer's input plus one layer's full set;
* every layer's hidden states of both models (``output_hidden_states``, the feature and fused
  KD paths read them): ``(layers + 1) x n x H``;
* attention maps when ``features.attention_weight > 0`` (eager attention, ``output_attentions``):
  per student layer ``seqs x heads x T^2`` scores and probabilities kept for backward (2 maps at the
  compute width), per teacher layer one map (every layer's is returned at once);
* the chunked KD loss: ``kd_chunk_size x vocab x 4 B x 4`` (student and teacher logits, their
  softmaxes, fp32).

The budget is the device's memory (CUDA: total memory of the device; CPU: ``MemAvailable``) or
``memory_budget_gb``. Over 90% of it, training stops before loading anything with one line that
names the first change that would fit: the top-k cache, LoRA, a smaller micro-batch, gradient
checkpointing. It is an estimate (allocator slack, CUDA context and kernels' workspaces are not
in it); ``tests/test_memory_plan.py`` checks it against measured CPU memory on a small pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ModelFacts", "model_facts", "MemoryEstimate", "estimate", "device_budget", "plan_or_stop"]

GB = 1e9


@dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs from one model's config.json."""

    params: int
    layers: int
    hidden: int
    kv_width: int
    intermediate: int
    vocab: int
    heads: int = 1


def model_facts(path: str) -> ModelFacts:
    """Facts of the model at ``path`` from its config.json; parameters counted on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pipeline.config import ConfigError

    try:
        conf = AutoConfig.from_pretrained(path)
    except OSError as exc:
        raise ConfigError(f"model {path!r}: cannot read its config ({exc})") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf)
    heads = conf.num_attention_heads
    head_dim = getattr(conf, "head_dim", None) or conf.hidden_size // heads
    kv = getattr(conf, "num_key_value_heads", None) or heads
    return ModelFacts(params=sum(p.numel() for p in model.parameters()), layers=conf.num_hidden_layers,
                      hidden=conf.hidden_size, kv_width=kv * head_dim,
                      intermediate=getattr(conf, "intermediate_size", 4 * conf.hidden_size), vocab=conf.vocab_size,
                      heads=heads)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per part; ``total`` is their sum."""

    student_weights: int
    grads_and_optimizer: int
    teacher_weights: int
    activations: int
    loss: int

    @property
    def total(self) -> int:
        return self.student_weights + self.grads_and_optimizer + self.teacher_weights + self.activations + self.loss

    def as_gb(self) -> dict[str, float]:
        parts = {k: getattr(self, k) for k in ("student_weights", "grads_and_optimizer", "teacher_weights",
                                                "activations", "loss")}
        return {k: round(v / GB, 3) for k, v in {**parts, "total": self.total}.items()}


def _trainable(cfg: Any, s: ModelFacts) -> int:
    """Trainable student params: all, or the LoRA adapters (r x (in + out) per adapted matrix)."""
    if cfg.lora is None:
        return s.params
    per_layer = {"q_proj": (s.hidden, s.hidden), "k_proj": (s.hidden, s.kv_width), "v_proj": (s.hidden, s.kv_width),
                 "o_proj": (s.hidden, s.hidden), "gate_proj": (s.hidden, s.intermediate),
                 "up_proj": (s.hidden, s.intermediate), "down_proj": (s.intermediate, s.hidden)}
    targets = per_layer if cfg.lora.target_modules == "all-linear" else {
        k: v for k, v in per_layer.items() if k in cfg.lora.target_modules}
    return s.layers * sum(cfg.lora.r * (a + b) for a, b in targets.values())


def estimate(cfg: Any, student: ModelFacts, teacher: ModelFacts | None, device: str) -> MemoryEstimate:
    """The estimate for a config on ``device`` ('cuda' or 'cpu'); ``teacher``: the facts of a teacher
    loaded on the same device (None: no teacher there, e.g. a top-k cache or another device)."""
    gpu = device == "cuda"
    width = 4 if cfg.dtype == "fp32" or not gpu else 2
    tokens = cfg.micro_batch_size * cfg.max_seq_len
    s = student
    per_layer = tokens * (6 * s.hidden + 2 * s.kv_width + 4 * s.intermediate) * width
    if cfg.gradient_checkpointing:
        acts = s.layers * tokens * s.hidden * width + per_layer
    else:
        acts = s.layers * per_layer
    acts += (s.layers + 1) * tokens * s.hidden * width
    t_bytes = 0
    chunk = min(getattr(cfg, "kd_chunk_size", cfg.loss_chunk_tokens), tokens)
    loss = chunk * s.vocab * 4 * 4
    features = getattr(cfg, "features", None)
    maps = cfg.micro_batch_size * cfg.max_seq_len ** 2 if features is not None and features.attention_weight > 0 else 0
    acts += 2 * s.layers * s.heads * maps * width
    if teacher is not None:
        t_width = {"bf16": 2, "fp16": 2, "fp32": 4}.get(cfg.teacher_dtype, 2 if gpu else 4)
        t_bytes = teacher.params * t_width
        acts += (teacher.layers + 1) * tokens * teacher.hidden * t_width
        acts += teacher.layers * teacher.heads * maps * t_width
    trainable = _trainable(cfg, s)
    return MemoryEstimate(student_weights=4 * s.params, grads_and_optimizer=12 * trainable, teacher_weights=t_bytes,
                          activations=acts, loss=loss)


def device_budget(device: str) -> int:
    """Bytes the run may use: the CUDA device's total memory, or the host's ``MemAvailable``."""
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _fixes(cfg: Any, teacher: ModelFacts | None) -> list[tuple[str, Any, ModelFacts | None]]:
    """Candidate changes in the order they are suggested: ``(text, changed cfg, teacher facts)``."""
    out = []
    if teacher is not None:
        out.append(("build the top-k teacher cache (`distill kd cache`, teacher_cache:) so the teacher is not "
                    "loaded", cfg, None))
    if cfg.lora is None:
        from pipeline.train.config import LoraConfig

        out.append(("train LoRA adapters (lora: {r: 16}) instead of all weights", cfg.model_copy(
            update={"lora": LoraConfig()}), teacher))
    mb = cfg.micro_batch_size
    while mb > 1:
        mb //= 2
        out.append((f"micro_batch_size: {mb} (grad_accum x{cfg.micro_batch_size // mb} keeps the batch)",
                    cfg.model_copy(update={"micro_batch_size": mb}), teacher))
    if not cfg.gradient_checkpointing:
        out.append(("gradient_checkpointing: true", cfg.model_copy(update={"gradient_checkpointing": True}),
                    teacher))
    return out


def plan_or_stop(cfg: Any, student: ModelFacts, teacher: ModelFacts | None, device: str,
                 budget: int | None = None) -> dict:
    """The estimate as a dict for the summary; raises a one-line ``ConfigError`` when over 90% of
    ``budget`` (default :func:`device_budget`), naming the first single change that would fit."""
    from pipeline.config import ConfigError

    budget = budget if budget is not None else device_budget(device)
    est = estimate(cfg, student, teacher, device)
    report = {"device": device, "budget_gb": round(budget / GB, 3), **{f"est_{k}_gb": v for k, v in
                                                                        est.as_gb().items()}}
    if est.total <= 0.9 * budget:
        return report
    for text, changed, t_facts in _fixes(cfg, teacher):
        fixed = estimate(changed, student, t_facts, device).total
        if fixed <= 0.9 * budget:
            raise ConfigError(f"memory: estimated {est.total / GB:.2f} GB > 90% of {budget / GB:.2f} GB on {device} "
                              f"({', '.join(f'{k} {v}' for k, v in est.as_gb().items() if k != 'total')}); "
                              f"{text} -> {fixed / GB:.2f} GB (memory_budget_gb overrides the budget)")
    raise ConfigError(f"memory: estimated {est.total / GB:.2f} GB > 90% of {budget / GB:.2f} GB on {device} and no "
                      "single change (top-k cache, LoRA, smaller micro-batch, checkpointing) fits; use a larger "
                      "device or shard with FSDP (memory_budget_gb overrides the budget)")
