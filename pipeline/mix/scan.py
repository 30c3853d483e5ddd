"""Pass 1 of the mix: per record, only what selection needs (never the record itself).

Per record: a 64-bit hash of its id (sampling keys), a 64-bit BLAKE2 digest of its prompt and
response as they are (exact duplicates), a MinHash of the prompt plus
the response's first ``window_words`` words (one-permutation MinHash, :mod:`pipeline.mix.minhash`), its size in
bytes, its completion tokens, and its domain / kind / teacher. About 600 bytes per record with
128 permutations, so 800K records need ~0.5 GB; the records themselves stay on disk.

The exact digest hashes the raw text, not the filters' normalised text
(:meth:`filters.dedup.DedupRule.signature` lowercases and collapses whitespace): normalising an
8 KB trace cost half of pass 1, and copies that differ only in case or whitespace have identical
near-dup signatures (which lowercase and split on whitespace), so the near pass removes them.

Each source's result is saved to ``<work>/scan-<i>.npz`` (+ ``sig-<i>.npy``) atomically, so a
killed mix resumes after the last finished source.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.mix.config import NearDedupConfig
from pipeline.mix.minhash import batch_minhash
from pipeline.mix.pool import ordered_map
from pipeline.mix.sources import Chunk, facts_of, load_record, read_chunks
from pipeline.records import RecordError

__all__ = ["SourceScan", "scan_source", "load_scan", "KINDS"]

KINDS = ["reasoning", "non_reasoning"]


@dataclass
class SourceScan:
    """Pass-1 arrays of one source (index = record ordinal within the source)."""

    rid: np.ndarray  # uint64
    exact: np.ndarray  # uint64
    sig: np.ndarray  # uint32 (n, num_perm), or (n, 0) when near dedup is off
    nbytes: np.ndarray  # int64
    tokens: np.ndarray  # int32
    domain: np.ndarray  # int32 codes into domains
    kind: np.ndarray  # int8 codes into KINDS
    teacher: np.ndarray  # int32 codes into teachers
    domains: list[str]
    teachers: list[str]

    def __len__(self) -> int:
        return len(self.rid)


def _u64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _near_text(prompt: str, response: str, window: int) -> str:
    return prompt + "\n" + " ".join(response.split(None, window)[:window])


def _scan_chunk(args: tuple[Chunk, dict[str, Any]]) -> dict[str, Any]:
    """Worker: one chunk -> lists of per-record values, or ``{"error": (path, line, msg, field)}``."""
    chunk, near = args
    out: dict[str, list] = {k: [] for k in ("rid", "exact", "sig", "nbytes", "tokens", "domain", "kind", "teacher")}
    for raw, line in zip(chunk.lines, chunk.line_numbers):
        try:
            rec = load_record(raw, chunk.path, line)
        except RecordError as exc:
            return {"error": (exc.path, exc.line, exc.reason, exc.field)}
        f = facts_of(rec, raw)
        out["rid"].append(_u64(f.rid))
        out["exact"].append(_u64(f.prompt + "\x00" + f.response))
        if near["enabled"]:
            out["sig"].append(_near_text(f.prompt, f.response, near["window_words"]))
        out["nbytes"].append(len(raw) + 1)
        out["tokens"].append(f.completion_tokens)
        out["domain"].append(f.domain)
        out["kind"].append(KINDS.index(f.kind))
        out["teacher"].append(f.teacher)
    width = near["num_perm"] if near["enabled"] else 0
    arrays: dict[str, Any] = {k: np.array(out[k], dtype=t) for k, t in _DTYPES.items()}
    arrays["sig"] = (batch_minhash(out["sig"], width, near["shingle_words"]) if width
                     else np.zeros((len(chunk.lines), 0), np.uint32))
    arrays["domain"], arrays["teacher"] = out["domain"], out["teacher"]
    return arrays


_DTYPES = {"rid": np.uint64, "exact": np.uint64, "nbytes": np.int64, "tokens": np.int32, "kind": np.int8}


def _codes(values: list[str], vocab: dict[str, int]) -> list[int]:
    return [vocab.setdefault(v, len(vocab)) for v in values]


def scan_source(files: list[Path], near: NearDedupConfig, workers: int, chunk_bytes: int, bar: Any,
                spill: Any = None) -> SourceScan:
    """Pass 1 over one source's files (chunks processed in ``workers`` processes, in order);
    ``spill(raw_lines, rid_hashes)`` gets each chunk's records in this process, in order."""
    near_d = near.model_dump()
    cols: dict[str, list] = {k: [] for k in ("rid", "exact", "sig", "nbytes", "tokens", "domain", "kind", "teacher")}
    domains: dict[str, int] = {}
    teachers: dict[str, int] = {}
    tasks = ((c, near_d) for c in read_chunks(files, chunk_bytes))
    for (chunk, _), res in ordered_map(_scan_chunk, tasks, workers):
        if "error" in res:
            path, line, msg, field = res["error"]
            raise RecordError(path, line, msg, field=field)
        res["domain"] = np.array(_codes(res["domain"], domains), dtype=np.int32)
        res["teacher"] = np.array(_codes(res["teacher"], teachers), dtype=np.int32)
        if spill is not None:
            spill(chunk.lines, res["rid"])
        for k in cols:
            cols[k].append(res[k])
        bar.update(len(chunk.lines))
    width = near.num_perm if near.enabled else 0
    empty = {**{k: np.zeros(0, t) for k, t in _DTYPES.items()}, "domain": np.zeros(0, np.int32),
             "teacher": np.zeros(0, np.int32), "sig": np.zeros((0, width), np.uint32)}
    arrays = {k: np.concatenate(v) if v else empty[k] for k, v in cols.items()}
    return SourceScan(**arrays, domains=list(domains), teachers=list(teachers))


def save_scan(scan: SourceScan, work: Path, index: int) -> None:
    """``scan-<i>.npz`` + ``sig-<i>.npy``, each written to a temp name and renamed (npz last)."""
    sig_tmp = work / f".sig-{index}.npy.tmp"
    with open(sig_tmp, "wb") as fh:
        np.save(fh, scan.sig)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(sig_tmp, work / f"sig-{index}.npy")
    arrays = {k: getattr(scan, k) for k in ("rid", "exact", "nbytes", "tokens", "domain", "kind", "teacher")}
    arrays["vocab"] = np.frombuffer(json.dumps({"domains": scan.domains, "teachers": scan.teachers}).encode(), np.uint8)
    tmp = work / f".scan-{index}.npz.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, work / f"scan-{index}.npz")


def load_scan(work: Path, index: int) -> SourceScan | None:
    """A saved pass-1 result, or None when that source was not finished."""
    path = work / f"scan-{index}.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    vocab = json.loads(arrays.pop("vocab").tobytes())
    sig = np.load(work / f"sig-{index}.npy", mmap_mode="r")
    return SourceScan(sig=sig, domains=vocab["domains"], teachers=vocab["teachers"], **arrays)
