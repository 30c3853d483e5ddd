"""FSDP on CPU processes (gloo): what accelerate's launch config asks for, which accelerate drops.

With a launch config saying ``distributed_type: FSDP`` and ``ACCELERATE_USE_CPU=true`` (two CPU
processes, e.g. ``configs/accelerate/fsdp2_cpu_2proc.yaml``), accelerate 1.16 sets the process group
up as ``MULTI_CPU`` and ``AcceleratorState`` promotes only GPU-like types (``MULTI_GPU``,
``MULTI_NPU``, ...) to ``FSDP``: the run silently trains with plain DDP. PyTorch's ``fully_shard``
(FSDP2) does run on CPU over gloo (tested with torch 2.13), so
:func:`enable_fsdp_on_cpu` marks the CPU group as data-parallel before the :class:`Accelerator` is
built and accelerate's own FSDP path (``fully_shard``, sharded checkpoints, full state dict for
``save_pretrained``) runs unchanged. This is for testing FSDP without a GPU; it changes nothing
when a GPU group is used or FSDP is not asked for, and nothing once accelerate promotes CPU runs
itself.
"""

from __future__ import annotations

import logging
import os

__all__ = ["fsdp_requested_on_cpu", "enable_fsdp_on_cpu"]

log = logging.getLogger(__name__)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def fsdp_requested_on_cpu() -> bool:
    """True under ``accelerate launch`` with an FSDP config, CPU processes and more than one of them."""
    return _flag("ACCELERATE_USE_FSDP") and _flag("ACCELERATE_USE_CPU") and int(os.environ.get("WORLD_SIZE", "1")) > 1


def enable_fsdp_on_cpu() -> bool:
    """Let the next ``Accelerator()`` apply its FSDP plugin to a CPU (gloo) process group.

    Initialises accelerate's process state (gloo) if needed; when it came up as ``MULTI_CPU``,
    relabels it ``MULTI_GPU`` (the device stays ``cpu``), which ``AcceleratorState`` then turns
    into ``FSDP``. Returns whether it did so.
    """
    if not fsdp_requested_on_cpu():
        return False
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=True)
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    if state.is_main_process:
        log.info("FSDP on %d CPU processes (%s): accelerate's FSDP plugin enabled for a CPU group",
                 state.num_processes, state.backend)
    return True
