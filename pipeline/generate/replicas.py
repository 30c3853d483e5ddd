"""Data-parallel replicas on one node: one ``distill generate`` process per replica, each its own shard.

Rules:

* Node shard ``i`` of ``N`` with ``D`` replicas becomes global shards ``i*D + d`` of ``N*D``
  (``d = 0..D-1``): the same hash split as multi-node runs, so ``distill merge`` (or any reader of
  the folder) sees one flat set of shards and resume works per replica.
* Replica ``d`` sees GPUs ``[d*tp, (d+1)*tp)`` of the node's visible GPUs (``CUDA_VISIBLE_DEVICES``
  when set, else ``0..D*tp-1``); ``tp = 0`` leaves the variable alone (CPU engines, tests).
* Each replica logs to ``{output_dir}/.replicas/replica-d.log``; the parent shows one progress bar
  from the lines appearing in the shard files, and fails (after the others finish) if any replica
  fails. Replicas get SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.generate.config import GenerateConfig

__all__ = ["run_data_parallel", "replica_configs", "visible_devices"]

log = logging.getLogger(__name__)


def visible_devices(count: int) -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = [d.strip() for d in env.split(",") if d.strip()] if env else [str(i) for i in range(count)]
    if len(devices) < count:
        raise RuntimeError(f"data parallel needs {count} GPUs (replicas x tensor_parallel_size) but "
                           f"CUDA_VISIBLE_DEVICES lists {len(devices)}: {','.join(devices)}")
    return devices[:count]


def replica_configs(cfg: GenerateConfig, replicas: int) -> list[GenerateConfig]:
    """The child configs: global shard index and count, one replica each."""
    out = []
    for d in range(replicas):
        data = cfg.model_dump(mode="json")
        data.update(shard_index=cfg.shard_index * replicas + d, num_shards=cfg.num_shards * replicas)
        data["vllm"]["data_parallel_size"] = 1
        out.append(GenerateConfig.model_validate(data))
    return out


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _count_lines(path: Path, offsets: dict[Path, tuple[int, int]]) -> int:
    """Complete lines in ``path``, reading only what was appended since the last call."""
    pos, count = offsets.get(path, (0, 0))
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size < pos:  # torn tail was repaired
        pos, count = 0, 0
    with open(path, "rb") as fh:
        fh.seek(pos)
        chunk = fh.read(size - pos)
    last = chunk.rfind(b"\n") + 1
    count += chunk.count(b"\n")
    offsets[path] = (pos + last, count)
    return count


def run_data_parallel(cfg: GenerateConfig, replicas: int, devices_per_replica: int, expected: int) -> list[Path]:
    """Run ``replicas`` child processes; returns their config files. ``expected``: samples of this node."""
    from tqdm.auto import tqdm

    from pipeline.generate.run import ledger_path

    work = Path(cfg.output_dir) / ".replicas"
    work.mkdir(parents=True, exist_ok=True)
    devices = visible_devices(replicas * devices_per_replica) if devices_per_replica else []
    children, ledgers, cfg_files = [], [], []
    for d, child in enumerate(replica_configs(cfg, replicas)):
        child_cfg = work / f"replica-{d}.yaml"
        child_cfg.write_text(yaml.safe_dump(child.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        env = dict(os.environ)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[d * devices_per_replica:(d + 1) * devices_per_replica])
        logf = open(work / f"replica-{d}.log", "ab")
        cmd = [sys.executable, "-m", "pipeline.cli", "generate", "--config", str(child_cfg), "--set", "progress=false"]
        children.append((subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                          preexec_fn=_die_with_parent), logf, d))
        ledgers.append(ledger_path(child))
        cfg_files.append(child_cfg)
    offsets: dict[Path, tuple[int, int]] = {}
    bar = tqdm(total=expected, unit="sample", desc=f"generate x{replicas} replicas", disable=not cfg.progress,
               dynamic_ncols=True)
    try:
        while any(p.poll() is None for p, _, _ in children):
            time.sleep(2.0)
            bar.n = sum(_count_lines(p, offsets) for p in ledgers)
            bar.refresh()
        bar.n = sum(_count_lines(p, offsets) for p in ledgers)
        bar.refresh()
    except BaseException:
        for p, _, _ in children:
            if p.poll() is None:
                p.terminate()
        raise
    finally:
        bar.close()
        for _, fh, _ in children:
            fh.close()
    failed = [(d, p.returncode) for p, _, d in children if p.returncode != 0]
    if failed:
        tails = []
        for d, rc in failed:
            text = (work / f"replica-{d}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
            tails.append(f"replica {d} exited {rc}: " + " | ".join(text[-3:]))
        raise RuntimeError("data-parallel generation failed (rerun the same command to resume):\n" + "\n".join(tails))
    return cfg_files
