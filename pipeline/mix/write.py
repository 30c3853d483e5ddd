"""Writing the corpus: spill in pass 1, then gather each shard in order into Parquet.

* **spill** (:class:`Spiller`, during pass 1, in the main process): every record's raw JSON goes
  to one of 128 files of its source, picked by the top bits of its shuffle key (which depends
  only on the seed and the record id). Nothing is parsed, and the sources are read only once.
* **gather** (per output shard, in ``workers`` processes): a shard is a contiguous run of the
  shuffled order, so its records lie in a few consecutive spill files; read those, keep the
  shard's records, order them by position, convert each to the corpus schema (:data:`SCHEMA`) and
  write the Parquet file (and ``jsonl/<shard>.jsonl`` when asked) to a temp name, then rename it.
  A shard whose file exists is done, so a killed run redoes at most the shards in flight.

Memory is bounded by one shard (its records' bytes plus one row group of rows) per worker, not by
the corpus.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.mix.sources import facts_of
from pipeline.records import write_json_atomic

__all__ = ["SCHEMA", "FEATURES", "Spiller", "shard_tasks", "gather_shard", "to_row"]

_HEAD = struct.Struct("<qI")  # record ordinal within its source, record length
FIXED = ("id", "messages", "source", "domain", "kind", "teacher", "prompt_id", "answer", "completion_tokens")
# name -> (datasets dtype, pyarrow type builder); `messages` is a list of {role, content}.
FEATURES = {"id": "string", "messages": "messages", "source": "string", "domain": "string", "kind": "string",
            "teacher": "string", "prompt_id": "string", "answer": "string", "completion_tokens": "int64",
            "metadata": "string"}


def _schema():
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    types = {"string": pa.string(), "int64": pa.int64(), "messages": pa.list_(message)}
    return pa.schema([(name, types[t]) for name, t in FEATURES.items()])


SCHEMA = None  # built on first use (pyarrow import stays out of `distill --help`)


def to_row(rec: dict[str, Any], raw: bytes, source: str) -> dict[str, Any]:
    """A record in the corpus schema; fields outside it go, as JSON, to ``metadata`` (lossless)."""
    f = facts_of(rec, raw)
    answer = rec.get("answer")
    pid = rec.get("prompt_id")
    extra = {k: v for k, v in rec.items() if k not in FIXED}
    return {"id": f"{source}/{f.rid}", "source": source, "domain": f.domain, "kind": f.kind, "teacher": f.teacher,
            "messages": [{"role": m["role"], "content": m["content"]} for m in rec["messages"]],
            "prompt_id": None if pid is None else str(pid),
            "answer": None if answer is None else (answer if isinstance(answer, str) else json.dumps(answer)),
            "completion_tokens": f.completion_tokens,
            "metadata": json.dumps(extra, ensure_ascii=False, sort_keys=True, default=str)}


class Spiller:
    """Pass 1's side job, in the main process: every record of source ``index``, as raw JSON, goes
    to the spill file of its shuffle key's top bits (``<work>/spill/<index>-<bucket>.bin``, entries
    ``(ordinal in source, length, bytes)``). Files are truncated on open: a source whose pass 1 was
    cut off is spilled again from its start. :meth:`close` fsyncs them (before the scan is saved)."""

    def __init__(self, work: Path, index: int, seed: int):
        from pipeline.mix.plan import HASH_BUCKET_BITS

        self.folder = work / "spill"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.seed = seed
        self.handles = [open(self.folder / f"{index}-{b:03d}.bin", "wb", buffering=1 << 18)
                        for b in range(2 ** HASH_BUCKET_BITS)]
        self.ordinal = 0

    def __call__(self, lines: list[bytes], rid: np.ndarray) -> None:
        from pipeline.mix.plan import hash_bucket, shuffle_keys

        for raw, b in zip(lines, hash_bucket(shuffle_keys(rid, self.seed)).tolist()):
            self.handles[b].write(_HEAD.pack(self.ordinal, len(raw)) + raw)
            self.ordinal += 1

    def close(self) -> None:
        for h in self.handles:
            h.flush()
            os.fsync(h.fileno())
            h.close()


def _read_selected(work: Path, source: int, buckets: list[int], want: dict[int, int]) -> list[tuple[int, bytes]]:
    """``(position, raw)`` of the entries of ``want`` (ordinal -> position) in these spill files."""
    out = []
    for b in buckets:
        data = (work / "spill" / f"{source}-{b:03d}.bin").read_bytes()
        at = 0
        while at < len(data):
            ordinal, n = _HEAD.unpack_from(data, at)
            at += _HEAD.size
            p = want.get(ordinal)
            if p is not None:
                out.append((p, data[at:at + n]))
            at += n
    return out


def shard_tasks(plan: Any, scans: list[Any], seed: int) -> list[dict[str, Any]]:
    """Per output shard: per source, the spill files holding its records and their positions."""
    from pipeline.mix.plan import hash_bucket, shuffle_keys

    offsets = np.cumsum([0] + [len(s) for s in scans])
    rid = np.concatenate([s.rid for s in scans])
    tasks = []
    for k, name in enumerate(plan.buckets):
        idx = np.flatnonzero(plan.bucket == k)
        src = np.searchsorted(offsets, idx, side="right") - 1
        hb = hash_bucket(shuffle_keys(rid[idx], seed))
        parts = {}
        for s in np.unique(src).tolist():
            mine = src == s
            parts[s] = (sorted(set(hb[mine].tolist())),
                        dict(zip((idx[mine] - offsets[s]).tolist(), plan.pos[idx[mine]].tolist())))
        tasks.append({"name": name, "parts": parts})
    return tasks


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def gather_shard(args: tuple[dict[str, Any], Path, list[str], int, bool]) -> dict[str, Any]:
    """Worker: one shard's records from the spill files, in order -> ``<work>/data/<name>.parquet``
    (+ ``jsonl/<name>.jsonl``); returns rows and bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    global SCHEMA
    SCHEMA = SCHEMA or _schema()
    task, work, sources, row_group, jsonl = args
    name = task["name"]
    out = work / "data"
    final = out / f"{name}.parquet"
    info = out / f"{name}.json"
    if final.is_file() and info.is_file():
        return json.loads(info.read_text())
    entries = sorted(((p, si, raw) for si, (buckets, want) in task["parts"].items()
                      for p, raw in _read_selected(work, si, buckets, want)), key=lambda e: e[0])
    tmp = out / f".{name}.parquet.tmp"
    jdir = work / "jsonl"
    if jsonl:
        jdir.mkdir(exist_ok=True)
    jtmp = jdir / f".{name}.jsonl.tmp"
    nbytes = 0
    jfh = open(jtmp, "w", encoding="utf-8") if jsonl else None
    with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
        for start in range(0, len(entries), row_group):
            rows = [to_row(json.loads(raw), raw, sources[si]) for _, si, raw in entries[start:start + row_group]]
            # column by column: 10x faster than Table.from_pylist on nested `messages`
            table = pa.table({k: pa.array([r[k] for r in rows], type=SCHEMA.field(k).type) for k in FEATURES},
                             schema=SCHEMA)
            nbytes += table.nbytes
            writer.write_table(table)
            if jfh is not None:
                jfh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if jfh is not None:
        jfh.close()
        _fsync_replace(jtmp, jdir / f"{name}.jsonl")
    _fsync_replace(tmp, final)
    result = {"name": name, "rows": len(entries), "num_bytes": int(nbytes), "file_bytes": final.stat().st_size}
    write_json_atomic(info, result)
    return result
