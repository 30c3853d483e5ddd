"""``distill merge``: join the shards of a multi-node / data-parallel generation into one JSONL file.

Rules:

* Inputs are generate folders (their ``shard-i-of-N`` files) or shard files. All shards must come
  from one split (one ``N``); with ``require_complete`` every shard ``0..N-1`` must be present and
  its stats file must say the shard finished, so a merge never silently drops a node's work.
* Each (prompt_id, sample_index) is written once; repeats across shards are counted and dropped.
* The output is written with the crash-safe ``ShardWriter``: a killed merge reruns to the same file.
  ``stats.json``-style numbers for the whole corpus go to ``<output stem>.stats.json`` and a length
  histogram to ``<output stem>.lengths.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from pipeline.cliutil import add_stage_parser, config_from_args
from pipeline.config import StageConfig
from pipeline.records import RecordError

__all__ = ["MergeConfig", "run", "register", "find_shards"]

log = logging.getLogger(__name__)


class MergeConfig(StageConfig):
    """``distill merge``: shards -> one JSONL."""

    inputs: list[str] = Field(..., min_length=1, description="generate output folders or shard files")
    output: str = Field(..., description="merged JSONL file")
    require_complete: bool = Field(True, description="fail unless every shard 0..N-1 is present and finished")


FLAGS = {
    "--inputs": ("inputs", "list", "generate output folders or shard files"),
    "--output": ("output", str, "merged JSONL file"),
}


def find_shards(inputs: list[str]) -> tuple[list[Path], int]:
    """Shard files named by ``inputs`` and their common shard count ``N``."""
    from pipeline.generate.run import SHARD_RE, shard_paths

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = shard_paths(p)
            if not found:
                raise RecordError(p, None, "no shard-XXXXX-of-NNNNN.jsonl/.parquet files in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise RecordError(p, None, "input not found")
    counts = {}
    for f in files:
        m = SHARD_RE.match(f.name)
        if not m:
            raise RecordError(f, None, "not a generate shard (expected shard-XXXXX-of-NNNNN.jsonl)")
        counts.setdefault(int(m.group(2)), []).append(f)
    if len(counts) > 1:
        raise RecordError(files[0].parent, None, f"shards of different splits mixed: {sorted(counts)}-way; "
                          "merge one generation at a time")
    return files, next(iter(counts))


def _check_complete(files: list[Path], num_shards: int) -> None:
    from pipeline.generate.run import SHARD_RE

    present = {int(SHARD_RE.match(f.name).group(1)): f for f in files}  # type: ignore[union-attr]
    missing = [i for i in range(num_shards) if i not in present]
    if missing:
        raise RecordError(files[0].parent, None, f"missing shard(s) {missing[:10]} of {num_shards} "
                          "(set require_complete: false to merge what is there)")
    for i, f in sorted(present.items()):
        stats = f.parent / (f"shard-{i:05d}-of-{num_shards:05d}.stats.json" if num_shards > 1 else "stats.json")
        ok = stats.is_file() and json.loads(stats.read_text(encoding="utf-8")).get("complete") is True
        if not ok:
            raise RecordError(f, None, f"shard {i} has not finished ({stats.name} missing or not complete); rerun its "
                              "generate command, or set require_complete: false")


def run(cfg: MergeConfig) -> dict[str, Any]:
    from pipeline.locking import output_lock

    files, num_shards = find_shards(cfg.inputs)
    with output_lock(cfg.output, "distill merge"):
        return _merge(cfg, files, num_shards)


def _merge(cfg: MergeConfig, files: list[Path], num_shards: int) -> dict[str, Any]:
    from pipeline.generate.run import compute_stats, sample_key, write_stats
    from pipeline.records import ShardWriter, iter_records

    if cfg.require_complete:
        _check_complete(files, num_shards)
    out = Path(cfg.output)
    read = 0
    with ShardWriter(out, key=sample_key) as writer:  # write() skips keys already written: repeats drop out
        batch: list[dict[str, Any]] = []
        for loc in iter_records(files):
            read += 1
            batch.append(loc.record)
            if len(batch) >= 1000:
                writer.write(batch)
                batch = []
        writer.write(batch)
        if not writer.done:  # an empty input is an error in every stage (a broken upstream step, not a result)
            raise RecordError(files[0].parent, None, f"the {len(files)} shard(s) hold no samples; nothing to merge")
        repeats = read - len(writer.done)
    stats, lengths = compute_stats([out])
    stats.update({"shards": len(files), "num_shards": num_shards, "repeats_dropped": repeats, "output": str(out)})
    write_stats(stats, lengths, out.with_name(out.stem + ".stats.json"), out.with_name(out.stem + ".lengths.png"), None)
    log.info("merged %d shards into %s: %d samples, %d prompts (%d repeats dropped)", len(files), out,
             stats["samples"], stats["prompts"], repeats)
    return stats


def register(subparsers: Any) -> None:
    parser = add_stage_parser(subparsers, "merge", MergeConfig,
                              "Merge the shards of a multi-node / data-parallel generation into one JSONL file.", FLAGS)
    parser.set_defaults(func=lambda args: run(config_from_args(MergeConfig, args, FLAGS)) and 0)
