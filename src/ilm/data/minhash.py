"""Vectorised MinHash: shingles -> 128 hashes -> 14 bands x 9 rows, plus a numpy union-find.

Why vectorised: hashing each shingle in Python (datasketch) costs microseconds per shingle; here a batch
of documents is one UTF-8 buffer, words are found and hashed with array operations (prefix polynomial
hashes), 5-gram hashes are rolled from word hashes, and the 128 permutations are one (128, n) uint32
matrix reduced per document with `np.minimum.reduceat`. Python touches each document only through
C-level string calls on whole groups (join, encode, `bytes.translate`/`bytes.lower`); only documents
with non-ASCII characters are lowercased one by one. `shingle_hashes_reference` is the simple
per-document path the fast one is pinned to (same hashes, same order).

Shingles (the seed): 5-grams of words (lowercased; a word is a run of [0-9a-z_] or non-ASCII bytes), or
5-grams of non-space characters for Chinese and other scripts written without spaces (`cjk_fraction`
>= 0.3). A document with fewer tokens than n has one shingle, all its tokens. `shingles()` is the
pure-Python reference of the same sets (used by tests and by the datasketch benchmark).
Permutation j of a 32-bit shingle hash x is (x ^ b_j) * a_j mod 2^32 (a_j odd: a bijection).
"""

from __future__ import annotations

import numpy as np

from ilm.data.shingle import (  # noqa: F401  (is_cjk, shingles, shingle_hashes_reference: part of this module's API)
    _P1,
    _P2,
    NGRAM,
    fmix64,
    is_cjk,
    shingle_hashes,
    shingle_hashes_reference,
    shingles,
)

NUM_PERM, THRESHOLD = 128, 0.7
EMPTY = np.uint32(0xFFFFFFFF)
CHUNK = 16384  # shingles per (128, CHUNK) hash block: 8 MB, cache-friendly


def permutations(num_perm: int = NUM_PERM, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of each permutation as (num_perm, 1) uint32 columns; a is odd."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**32, num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a[:, None], b[:, None]


def _fold32(h: np.ndarray) -> np.ndarray:
    return (h ^ (h >> np.uint64(32))).astype(np.uint32)


def signatures(texts: list[str], n: int = NGRAM, num_perm: int = NUM_PERM, seed: int = 1) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures; a document without shingles is all 0xFFFFFFFF."""
    hashes, counts = shingle_hashes(texts, n)
    return minhash_from_hashes(hashes, counts, num_perm, seed)


def minhash_from_hashes(hashes: np.ndarray, counts: np.ndarray, num_perm: int = NUM_PERM, seed: int = 1) -> np.ndarray:
    """Min over each document's shingles of every permutation, CHUNK shingles at a time."""
    a, b = permutations(num_perm, seed)
    out = np.full((num_perm, counts.size), EMPTY, dtype=np.uint32)
    has = np.flatnonzero(counts > 0)
    if has.size == 0:
        return out.T.copy()
    x = _fold32(hashes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[has]
    total = x.size
    cuts = np.arange(0, total, CHUNK)
    seg = np.union1d(starts, cuts)  # segments never span a document boundary or a chunk cut
    seg_doc = np.searchsorted(starts, seg, side="right") - 1
    partial = np.empty((num_perm, seg.size), dtype=np.uint32)
    buf = np.empty((num_perm, min(CHUNK, total)), dtype=np.uint32)  # one block buffer, reused
    bounds = np.searchsorted(seg, np.append(cuts, total))
    for k, c0 in enumerate(cuts.tolist()):
        c1 = min(c0 + CHUNK, total)
        s0, s1 = bounds[k], bounds[k + 1]
        block = buf[:, : c1 - c0]
        np.bitwise_xor(x[None, c0:c1], b, out=block)
        block *= a
        np.minimum.reduceat(block, seg[s0:s1] - c0, axis=1, out=partial[:, s0:s1])
    first = np.searchsorted(seg_doc, np.arange(has.size))
    out[:, has] = np.minimum.reduceat(partial, first, axis=1)
    return out.T.copy()


def jaccard_estimate(s1: np.ndarray, s2: np.ndarray) -> np.ndarray | float:
    """Fraction of equal hashes: rows of s1 against rows of s2."""
    return np.mean(s1 == s2, axis=-1)


def band_hashes(sig: np.ndarray, bands: int = 14, rows: int = 9) -> np.ndarray:
    """(n, bands) uint64: one hash per band of `rows` consecutive signature values."""
    s = sig.astype(np.uint64)
    out = np.empty((sig.shape[0], bands), dtype=np.uint64)
    for k in range(bands):
        h = np.full(sig.shape[0], np.uint64(((k + 1) * int(_P2)) & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        for r in range(rows):
            h = (h ^ s[:, k * rows + r]) * _P1
        out[:, k] = fmix64(h)
    return out


def candidate_probability(j: float | np.ndarray, bands: int, rows: int) -> np.ndarray:
    """P(two documents at Jaccard j share at least one band) = 1 - (1 - j^r)^b."""
    return 1.0 - (1.0 - np.asarray(j, dtype=float) ** rows) ** bands


def optimal_bands(threshold: float = THRESHOLD, num_perm: int = NUM_PERM, fp_weight: float = 0.5) -> tuple[int, int]:
    """Bands x rows (b*r <= num_perm) minimising the false-positive area below the threshold plus the
    false-negative area above it; (0.7, 128) gives the seed's 14 x 9."""
    grid_lo = np.linspace(0.0, threshold, 2001)
    grid_hi = np.linspace(threshold, 1.0, 2001)
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(candidate_probability(grid_lo, b, r), grid_lo)
            fn = np.trapezoid(1.0 - candidate_probability(grid_hi, b, r), grid_hi)
            err = fp_weight * fp + (1 - fp_weight) * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


# --- union-find over array indices -----------------------------------------------------------------


def _compress(parent: np.ndarray) -> np.ndarray:
    while True:
        gp = parent[parent]
        if np.array_equal(gp, parent):
            return parent
        parent = gp


def union(parent: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Merge the sets of each edge (u[i], v[i]); roots are always the smallest index (deterministic)."""
    while u.size:
        parent = _compress(parent)
        ru, rv = parent[u], parent[v]
        live = ru != rv
        if not live.any():
            break
        ru, rv = ru[live], rv[live]
        u, v = u[live], v[live]
        np.minimum.at(parent, np.maximum(ru, rv), np.minimum(ru, rv))
    return _compress(parent)
