"""Loading the models a training stage uses, and facts about how they are wrapped.

``load_tokenizer`` / ``load_student`` (the loop's student) and ``load_teacher`` (kd) live here so
the stage modules and the loop import model loading from one place, never from each other.
"""

from __future__ import annotations

from typing import Any

__all__ = ["weights_sharded", "output_head"]


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
