"""Pass-1 arrays -> the plan: which records go where, in what order.

1. Duplicates are removed first (:mod:`pipeline.mix.dedup`), so quotas count distinct records.
2. Each source's quota is filled by **stratified** sampling: its (domain, kind) strata get shares
   proportional to their sizes (largest remainder), and within a stratum the records with the
   smallest seeded hash of their id are taken. The hash depends on the seed, the source name and
   the record id only, so the sample does not depend on file order or chunking.
3. Each source's sample is split the same way: ``validation_fraction`` of it (smallest hash under
   another salt) is the validation split, so every source is represented in both splits.
4. Each split is shuffled by a third seeded hash (:func:`shuffle_keys`, known in pass 1, which
   spills every record into the file of its key's top bits) and cut into shards of about ``shard_mb``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.mix.config import MixConfig
from pipeline.mix.dedup import exact_duplicates, near_duplicates
from pipeline.mix.scan import SourceScan

__all__ = ["Plan", "make_plan", "SPLITS", "shuffle_keys", "hash_bucket", "HASH_BUCKET_BITS"]

log = logging.getLogger(__name__)
SPLITS = ("train", "validation")
NOT_SELECTED, EXACT_DUP, NEAR_DUP, SELECTED = 0, 1, 2, 3


@dataclass
class Plan:
    """Per record (global ordinal, sources in order): ``bucket`` (-1 = not in the corpus), ``pos``
    (its place in its split), ``status``; ``buckets`` names the output shards."""

    bucket: np.ndarray
    pos: np.ndarray
    status: np.ndarray
    buckets: list[str]
    stats: dict[str, Any] = field(default_factory=dict)


def _salt(seed: int, purpose: str, source: str = "") -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(f"{seed}:{purpose}:{source}".encode(), digest_size=8).digest(), "little"))


def seeded_hash(x: np.ndarray, salt: np.uint64) -> np.ndarray:
    """splitmix64(x ^ salt): a well-mixed 64-bit hash, vectorised."""
    with np.errstate(over="ignore"):
        z = (x ^ salt) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


HASH_BUCKET_BITS = 7  # pass 1 spills each source into 2**7 files by the top bits of the shuffle key


def shuffle_keys(rid: np.ndarray, seed: int) -> np.ndarray:
    """The key each split is sorted by (a record's place in the corpus), from its id hash and the seed."""
    return seeded_hash(rid, _salt(seed, "shuffle"))


def hash_bucket(keys: np.ndarray) -> np.ndarray:
    """The spill file of each shuffle key: its top bits, so a shard's records lie in a few consecutive files."""
    return (keys >> np.uint64(64 - HASH_BUCKET_BITS)).astype(np.int64)


def _smallest(indices: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` indices with the smallest keys (ties: lower index), as a sorted array."""
    order = np.lexsort((indices, keys))
    return np.sort(indices[order[:k]])


def _allocate(sizes: np.ndarray, target: int) -> np.ndarray:
    """Largest-remainder shares of ``target`` proportional to ``sizes`` (never above a size)."""
    exact = sizes * (target / sizes.sum())
    alloc = np.minimum(np.floor(exact).astype(np.int64), sizes)
    rest = target - alloc.sum()
    for i in np.argsort(-(exact - alloc), kind="stable"):
        if rest <= 0:
            break
        if alloc[i] < sizes[i]:
            alloc[i] += 1
            rest -= 1
    return alloc


def _quota(cfg: MixConfig, i: int, available: int) -> int:
    s = cfg.sources[i]
    if s.count is not None:
        return s.count
    if s.share is not None:
        return int(round(s.share * (cfg.total or 0)))
    return int(round((s.fraction or 1.0) * available))


def _sample(idx: np.ndarray, strata: np.ndarray, keys: np.ndarray, target: int) -> np.ndarray:
    """Stratified sample of ``target`` from ``idx`` (strata codes and hash keys aligned with ``idx``)."""
    codes, inverse, sizes = np.unique(strata, return_inverse=True, return_counts=True)
    alloc = _allocate(sizes, target)
    picked = [_smallest(idx[inverse == c], keys[inverse == c], int(alloc[c])) for c in range(len(codes))]
    return np.sort(np.concatenate(picked)) if picked else idx[:0]


def _dedup(scans: list[SourceScan], cfg: MixConfig, src: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Status per record after exact + near dedup, and the counts (per source, and across sources)."""
    exact = np.concatenate([s.exact for s in scans])
    status = np.full(len(exact), NOT_SELECTED, dtype=np.int8)
    ex_of = exact_duplicates(exact)
    status[ex_of >= 0] = EXACT_DUP
    near_of = np.full(len(exact), -1, dtype=np.int64)
    if cfg.near_dedup.enabled:
        sig = np.concatenate([np.asarray(s.sig) for s in scans])
        near_of = near_duplicates(sig, np.flatnonzero(ex_of < 0), cfg.near_dedup)
        del sig
        status[near_of >= 0] = NEAR_DUP
    names = [s.name for s in cfg.sources]
    stats = {}
    for i, name in enumerate(names):
        mine = src == i
        cross = {}
        for what, of in (("exact", ex_of), ("near", near_of)):
            hit = mine & (of >= 0)
            other = src[of[hit]]
            cross[what] = {names[j]: int((other == j).sum()) for j in range(len(names)) if (other == j).any()}
        stats[name] = {"input": int(mine.sum()), "exact_duplicates": int((mine & (ex_of >= 0)).sum()),
                       "near_duplicates": int((mine & (near_of >= 0)).sum()), "duplicate_of_source": cross}
    return status, stats


def _select(scans: list[SourceScan], cfg: MixConfig, status: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Set SELECTED on each source's stratified sample; returns the split per record (-1, 0, 1)."""
    split = np.full(len(status), -1, dtype=np.int8)
    short = []
    offset = 0
    for i, (scan, s) in enumerate(zip(scans, cfg.sources)):
        n = len(scan)
        idx = np.flatnonzero(status[offset:offset + n] == NOT_SELECTED)
        target = _quota(cfg, i, len(idx))
        if target > len(idx):
            short.append(f"{s.name}: quota {target}, {len(idx)} distinct records")
            target = len(idx)
        strata = scan.domain[idx].astype(np.int64) * len(KIND_CODES) + scan.kind[idx]
        chosen = _sample(idx, strata, seeded_hash(scan.rid[idx], _salt(cfg.seed, "sample", s.name)), target)
        n_val = int(round(cfg.validation_fraction * len(chosen)))
        val = _smallest(chosen, seeded_hash(scan.rid[chosen], _salt(cfg.seed, "split", s.name)), n_val)
        status[offset + chosen] = SELECTED
        split[offset + chosen] = 0
        split[offset + val] = 1
        stats[s.name].update(available=len(idx), quota=_quota(cfg, i, len(idx)), selected=len(chosen),
                             train=len(chosen) - n_val, validation=n_val)
        offset += n
    if short:
        msg = "sources short of their quota: " + "; ".join(short)
        if cfg.strict_quotas:
            raise UserError(msg + " (strict_quotas is set; lower the quotas or add records)")
        log.warning("%s; taking all they have", msg)
    return split


KIND_CODES = (0, 1)


def _place(rid: np.ndarray, nbytes: np.ndarray, split: np.ndarray, cfg: MixConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Shuffled position and shard (bucket) of every selected record."""
    bucket = np.full(len(split), -1, dtype=np.int32)
    pos = np.full(len(split), -1, dtype=np.int64)
    names: list[str] = []
    shuffle = shuffle_keys(rid, cfg.seed)
    for code, name in enumerate(SPLITS):
        idx = np.flatnonzero(split == code)
        if len(idx) == 0:
            continue
        order = idx[np.lexsort((idx, shuffle[idx]))]
        pos[order] = np.arange(len(order))
        shards = max(1, math.ceil(int(nbytes[idx].sum()) / (cfg.shard_mb * 1_000_000)))
        shards = min(shards, len(order))
        bucket[order] = len(names) + np.arange(len(order)) * shards // len(order)
        names += [f"{name}-{k:05d}-of-{shards:05d}" for k in range(shards)]
    return bucket, pos, names


def make_plan(scans: list[SourceScan], cfg: MixConfig) -> Plan:
    """Dedup, quotas, stratified sampling, split, shuffle and sharding (see the module doc)."""
    src = np.concatenate([np.full(len(s), i, dtype=np.int16) for i, s in enumerate(scans)])
    status, stats = _dedup(scans, cfg, src)
    split = _select(scans, cfg, status, stats)
    rid = np.concatenate([s.rid for s in scans])
    nbytes = np.concatenate([s.nbytes for s in scans])
    bucket, pos, names = _place(rid, nbytes, split, cfg)
    return Plan(bucket=bucket, pos=pos, status=status, buckets=names, stats={"sources": stats})
