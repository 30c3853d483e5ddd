"""Loading the models a training stage uses, and facts about how they are wrapped.

``load_tokenizer`` / ``load_student`` (the loop's student) and ``load_teacher`` (kd) live here so
the stage modules and the loop import model loading from one place, never from each other.
"""

from __future__ import annotations

from typing import Any

__all__ = ["weights_sharded", "output_head", "teacher_dtype", "load_teacher", "forward_states", "hidden_states"]


def weights_sharded(accelerator: Any) -> bool:
    """True when parameters are sharded across ranks (FSDP, ZeRO-3): ``lm_head.weight`` is then not
    a whole matrix on each rank, so fused losses that read it directly cannot be used."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        return plugin is not None and plugin.zero_stage == 3
    return False


def output_head(accelerator: Any, model: Any) -> tuple[Any, Any]:
    """``(weight [V, H], bias or None)`` of the (unwrapped) model's output embedding."""
    head = accelerator.unwrap_model(model).get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def teacher_dtype(name: str, device: Any) -> Any:
    """The teacher's weights dtype for a config's ``teacher_dtype``: ``auto`` = bf16 on GPU, fp32 on CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def load_teacher(cfg: Any, device: Any, attn_implementation: str | None = None) -> tuple[Any, Any]:
    """The frozen teacher (eval, no grad) of a kd config (``teacher``, ``teacher_dtype``) on ``device``,
    and its tokenizer; ``attn_implementation`` (e.g. ``eager`` for attention maps) or transformers'
    default."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.config import ConfigError

    if not cfg.teacher:
        raise ConfigError("teacher: required here (no complete teacher_cache to train from)")
    try:
        tok = AutoTokenizer.from_pretrained(cfg.teacher)
        extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        model = AutoModelForCausalLM.from_pretrained(cfg.teacher, dtype=teacher_dtype(cfg.teacher_dtype, device),
                                                     **extra)
    except OSError as exc:
        raise ConfigError(f"teacher {cfg.teacher!r}: cannot load ({exc})") from None
    model.config.use_cache = False
    model.eval().requires_grad_(False)
    return model.to(device), tok


def forward_states(model: Any, batch: dict, attentions: bool = False) -> Any:
    """A model's forward output for a batch with every layer's ``hidden_states`` and only the last
    position's logits; with ``attentions``, also ``attentions`` (one ``[B, H, T, T]`` map per decoder
    layer: eager attention only, the others return None)."""
    from pipeline.train.data import model_inputs

    extra = {"output_attentions": True} if attentions else {}
    return model(**model_inputs(batch), output_hidden_states=True, logits_to_keep=1, **extra)


def hidden_states(model: Any, batch: dict, layers: bool = False) -> Any:
    """A model's final (normed) hidden states ``[B, T, H]`` for a batch, without its logits (the
    teacher's in kd, the student's in the fused SFT loss); with ``layers``, the tuple of every
    layer's hidden states (index 0 = embeddings, -1 = final)."""
    out = forward_states(model, batch)
    return out.hidden_states if layers else out.hidden_states[-1]
