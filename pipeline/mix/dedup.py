"""Duplicates across sources, on pass-1 arrays (no records in memory).

* exact: equal digests of prompt + response (:mod:`pipeline.mix.scan`); the first record in
  priority order (source order in the config, then file and line order) is kept.
* near: LSH over one-permutation MinHash signatures (:mod:`pipeline.mix.minhash`). Each of
  ``bands`` bands of a signature is hashed to 64 bits; records that share a band value are
  candidates (found by sorting, per band, so memory stays linear); each candidate pair is confirmed
  by the signatures' Jaccard estimate >= ``threshold`` (bins empty in both ignored); then, in
  priority order, a record is dropped when it matches a record that was kept. Candidates are taken
  among the ``MAX_NEIGHBOURS`` nearest in each sorted band, which bounds the pairs on huge clusters.
"""

from __future__ import annotations

import numpy as np

from pipeline.mix.config import NearDedupConfig
from pipeline.mix.minhash import jaccard

__all__ = ["exact_duplicates", "near_duplicates", "MAX_NEIGHBOURS"]

MAX_NEIGHBOURS = 32
_PAIR_BATCH = 1 << 16


def exact_duplicates(exact: np.ndarray) -> np.ndarray:
    """``dup_of[i]`` = the earlier record ``i`` repeats, or -1."""
    _, first, inverse = np.unique(exact, return_index=True, return_inverse=True)
    keeper = first[inverse.reshape(-1)]
    return np.where(keeper != np.arange(len(exact)), keeper, -1)


def _band_hashes(sig: np.ndarray, band: int, rows: int) -> np.ndarray:
    x = np.asarray(sig[:, band * rows:(band + 1) * rows], dtype=np.uint64)
    mult = np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) | np.uint64(1)
    with np.errstate(over="ignore"):
        return (x * mult).sum(axis=1, dtype=np.uint64) ^ np.uint64(band)


def _candidate_pairs(sig: np.ndarray, alive: np.ndarray, bands: int) -> np.ndarray:
    rows = sig.shape[1] // bands
    found = []
    sub = sig[alive]
    for b in range(bands):
        h = _band_hashes(sub, b, rows)
        order = np.argsort(h, kind="stable")
        hs, idx = h[order], alive[order]
        for d in range(1, MAX_NEIGHBOURS + 1):
            eq = hs[d:] == hs[:-d]
            if not eq.any():
                break
            found.append(np.stack([idx[:-d][eq], idx[d:][eq]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0)


def near_duplicates(sig: np.ndarray, alive: np.ndarray, cfg: NearDedupConfig) -> np.ndarray:
    """``dup_of[i]`` = the kept record that ``i`` nearly repeats, or -1 (only ``alive`` records judged)."""
    n = sig.shape[0]
    dup_of = np.full(n, -1, dtype=np.int64)
    if not cfg.enabled or n == 0 or len(alive) < 2:
        return dup_of
    pairs = _candidate_pairs(sig, alive, cfg.bands)
    keep = []
    for start in range(0, len(pairs), _PAIR_BATCH):
        p = pairs[start:start + _PAIR_BATCH]
        j = jaccard(np.asarray(sig[p[:, 0]]), np.asarray(sig[p[:, 1]]))
        keep.append(p[j >= cfg.threshold])
    confirmed = np.concatenate(keep) if keep else pairs
    confirmed = confirmed[np.lexsort((confirmed[:, 0], confirmed[:, 1]))]
    for a, b in confirmed.tolist():  # by b, then a: a's fate is settled before b is judged
        if dup_of[b] < 0 and dup_of[a] < 0:
            dup_of[b] = a
    return dup_of
