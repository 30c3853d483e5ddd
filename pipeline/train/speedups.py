"""Optional speed switches for the student, each off by default and measured in
``benchmarks/gpu_train.py``:

``liger: true``
    Liger's Triton kernels (``pip install liger-kernel``) for RMSNorm, RoPE and SwiGLU, patched
    into the loaded model instance: fewer kernel launches and fewer saved activations (SwiGLU
    recomputes its activation in backward). The loss stays ours (the fused cross-entropy in
    :mod:`pipeline.train.losses`). Needs CUDA; on CPU, or without the package, a config asking
    for it is an error (say ``liger: false``), not a silent no-op.
``compile: true``
    ``torch.compile`` of each decoder layer in place (the torchtitan recipe: per-block, so
    parameter names and ``save_pretrained`` are unchanged). The first steps pay the compile.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from pipeline.config import ConfigError

__all__ = ["apply_liger", "compile_layers"]

log = logging.getLogger(__name__)


def apply_liger(model: Any) -> None:
    import torch

    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("liger: true needs the liger-kernel package (pip install liger-kernel)")
    if not torch.cuda.is_available():
        raise ConfigError("liger: true needs a CUDA device (Liger's kernels are Triton GPU kernels)")
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    log.info("liger kernels: RMSNorm, RoPE, SwiGLU")


def compile_layers(model: Any) -> int:
    """``torch.compile`` every decoder layer in place; returns how many were compiled."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ConfigError(f"compile: true: {type(model).__name__} has no .model.layers to compile")
    for layer in layers:
        layer.compile()
    log.info("torch.compile: %d decoder layers", len(layers))
    return len(layers)
