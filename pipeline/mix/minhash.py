"""One-permutation MinHash signatures for a whole chunk of texts at once (numpy).

The mix hashes 800K records in minutes on two cores, which a MinHash with ``num_perm``
permutations per record (:func:`filters.dedup.minhash_values`: ``num_perm`` multiply-mods per
shingle) cannot: there the arithmetic, not Python, is the cost. One-permutation hashing (Li, Owen
and Zhang, NIPS 2012) hashes each shingle once: the hash's high bits pick one of ``num_perm``
bins, the low 32 bits are the value, and a record's signature is the minimum value per bin
(``EMPTY`` where no shingle fell). Two records agree in a bin with probability equal to their
Jaccard similarity; :func:`jaccard` estimates it as the matching bins among those not empty in
both (the OPH estimator), so short texts with many empty bins are not inflated.

Shingles are ``shingle_words`` consecutive words of the lowercased text split at ASCII whitespace
(as in the filters' dedup); word and shingle hashes are polynomial hashes computed with array
operations over the whole chunk, so no Python code runs per word.
"""

from __future__ import annotations

import numpy as np

__all__ = ["batch_minhash", "jaccard", "EMPTY"]

EMPTY = np.uint32(0xFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


_SPACE = np.zeros(256, dtype=bool)
_SPACE[[9, 10, 11, 12, 13, 32]] = True
_P = np.uint64(0x100000001B3)  # odd, so invertible modulo 2**64
_Q = np.uint64(pow(0x100000001B3, -1, 2**64))
_PAD = " \x01" * 8  # sentinel words: every text, even an empty one, has at least one shingle


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)  # wraps modulo 2**64, as intended


def _word_hashes(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets and position-independent polynomial hashes of the words of ``data`` (bytes)."""
    space = _SPACE[data]
    inside = ~space
    edge = np.diff(np.concatenate(([False], inside, [False])).astype(np.int8))
    starts, ends = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
    with np.errstate(over="ignore"):
        acc = np.cumsum((data.astype(np.uint64) + np.uint64(1)) * _powers(_Q, len(data)), dtype=np.uint64)
        before = np.where(starts > 0, acc[np.maximum(starts - 1, 0)], np.uint64(0))
        return starts, (acc[ends - 1] - before) * _powers(_P, len(data))[starts]


def batch_minhash(texts: list[str], num_perm: int, shingle_words: int) -> np.ndarray:
    """``(len(texts), num_perm)`` uint32 one-permutation signatures; equal texts give equal rows.

    Vectorised over the whole chunk: the texts (lowercased, each padded with sentinel words) are
    joined into one byte array, words are found and hashed with array operations, and shingles
    that would span two texts are dropped.
    """
    sig = np.full((len(texts), num_perm), EMPTY, dtype=np.uint32)
    if not texts:
        return sig
    pad = _PAD[: 2 * (shingle_words - 1)]
    encoded = [(t.lower() + pad + "\n").encode("utf-8") for t in texts]
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    bounds = np.cumsum([len(e) for e in encoded])
    starts, wh = _word_hashes(data)
    rec = np.searchsorted(bounds, starts, side="right")
    k = shingle_words
    n = len(wh) - k + 1
    sh = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            sh = sh * np.uint64(0x9E3779B97F4A7C15) + wh[j:n + j]
    keep = rec[:n] == rec[k - 1:]
    h, row = _mix64(sh[keep]), rec[:n][keep]
    slot = row * num_perm + ((h >> np.uint64(32)) % np.uint64(num_perm)).astype(np.int64)
    np.minimum.at(sig.reshape(-1), slot, (h & np.uint64(0xFFFFFFFE)).astype(np.uint32))
    return sig


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Jaccard estimate of signature arrays: equal bins among bins not empty in both."""
    both_empty = (a == EMPTY) & (b == EMPTY)
    used = (~both_empty).sum(axis=1)
    return ((a == b) & ~both_empty).sum(axis=1) / np.maximum(used, 1)
