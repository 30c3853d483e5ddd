"""Pass 2 of the mix: stream the selected records into shuffled Parquet shards.

* **scatter**: read every source again, in the same order as pass 1; each selected record's raw
  JSON goes, with its position in the split and its source, to its shard's bucket file
  (``<work>/buckets/<shard>.bin``). Nothing is parsed; memory is one input chunk.
* **gather**: per shard (in ``workers`` processes), read the bucket (~``shard_mb``), order it by
  position, convert each record to the corpus schema (:data:`SCHEMA`) and write the Parquet file
  (and ``jsonl/<shard>.jsonl`` when asked) to a temp name, then rename it. A shard whose file exists is done, so a
  killed run redoes at most the shards in flight.

Memory is bounded by a shard (its bucket bytes plus one row group of rows) per worker, not by the corpus.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.mix.sources import facts_of, read_chunks

__all__ = ["SCHEMA", "FEATURES", "scatter", "gather_shard", "to_row"]

_HEAD = struct.Struct("<qIH")  # position in split, record length, source index
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


def scatter(source_files: list[list[Path]], bucket: np.ndarray, pos: np.ndarray, names: list[str], work: Path,
            chunk_bytes: int, bar: Any) -> None:
    """Route every selected raw record to its shard's bucket file; fsync all, then mark done."""
    folder = work / "buckets"
    folder.mkdir(parents=True, exist_ok=True)
    handles = [open(folder / f"{n}.bin", "wb", buffering=1 << 20) for n in names]
    g = 0
    try:
        for si, files in enumerate(source_files):
            for chunk in read_chunks(files, chunk_bytes):
                n = len(chunk.lines)
                bs, ps = bucket[g:g + n].tolist(), pos[g:g + n].tolist()
                for raw, b, p in zip(chunk.lines, bs, ps):
                    if b >= 0:
                        handles[b].write(_HEAD.pack(p, len(raw), si) + raw)
                g += n
                bar.update(n)
        for h in handles:
            h.flush()
            os.fsync(h.fileno())
    finally:
        for h in handles:
            h.close()
    if g != len(bucket):
        raise RuntimeError(f"mix: sources changed between passes ({g} records now, {len(bucket)} in pass 1)")
    (work / "buckets" / "DONE").write_text("ok\n")


def _read_bucket(path: Path) -> list[tuple[int, int, bytes]]:
    data = path.read_bytes()
    out = []
    at = 0
    while at < len(data):
        p, n, si = _HEAD.unpack_from(data, at)
        at += _HEAD.size
        out.append((p, si, data[at:at + n]))
        at += n
    out.sort(key=lambda t: t[0])
    return out


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def gather_shard(args: tuple[str, Path, list[str], int, bool]) -> dict[str, Any]:
    """Worker: one bucket -> ``<work>/data/<name>.parquet`` (+ ``jsonl/<name>.jsonl``); returns rows and bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    global SCHEMA
    SCHEMA = SCHEMA or _schema()
    name, work, sources, row_group, jsonl = args
    out = work / "data"
    final = out / f"{name}.parquet"
    info = out / f"{name}.json"
    if final.is_file() and info.is_file():
        return json.loads(info.read_text())
    entries = _read_bucket(work / "buckets" / f"{name}.bin")
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
            table = pa.Table.from_pylist(rows, schema=SCHEMA)
            nbytes += table.nbytes
            writer.write_table(table)
            if jfh is not None:
                jfh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if jfh is not None:
        jfh.close()
        _fsync_replace(jtmp, jdir / f"{name}.jsonl")
    _fsync_replace(tmp, final)
    result = {"name": name, "rows": len(entries), "num_bytes": int(nbytes), "file_bytes": final.stat().st_size}
    info.write_text(json.dumps(result))
    return result
