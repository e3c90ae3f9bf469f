"""MinHash verification links every pair of a band bucket above the threshold, not only sorted neighbours.

Signatures are built by hand so that the cases are exact: near-duplicates that share only one band, with
an unrelated document sorting between them in that band's bucket, and large buckets mixing clusters
with unrelated documents. The result is checked against a brute-force reference (every pair that shares
a band and whose estimate passes the threshold, joined transitively).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ilm.data import minhash as mh
from ilm.data.dedup import MinHashDedup, _write_meta

ROWS, BANDS, PERM = 9, 14, 128


def _write_shards(work: Path, sigs: np.ndarray, n_shards: int) -> np.ndarray:
    """The files a collector leaves (signatures, band hashes, meta), documents split over shards in order."""
    cuts = np.array_split(np.arange(sigs.shape[0]), n_shards)
    for s, rows in enumerate(cuts):
        sig = np.ascontiguousarray(sigs[rows])
        (work / f"sig-{s:05d}.u32").write_bytes(sig.tobytes())
        (work / f"bands-{s:05d}.u64").write_bytes(mh.band_hashes(sig, BANDS, ROWS).tobytes())
        _write_meta(work / f"meta-{s:05d}.parquet", [f"d{i:04d}" for i in rows], [float(i) for i in rows],
                    {"n_shingles": [10] * len(rows)})
    return mh.band_hashes(sigs, BANDS, ROWS)


def _removed(work: Path, n_shards: int, n: int) -> dict[str, str]:
    out: dict[str, str] = {}
    bounds = np.cumsum([0] + [len(r) for r in np.array_split(np.arange(n), n_shards)])
    for s in range(n_shards):
        t = pq.read_table(work / f"drop-{s:05d}.parquet")
        for i, dup in zip(t.column("idx").to_pylist(), t.column("duplicate_of").to_pylist()):
            out[f"d{bounds[s] + i:04d}"] = dup
    return out


def _reference(sigs: np.ndarray, bands: np.ndarray, threshold: float) -> dict[str, str]:
    """Brute force: every pair sharing a band with estimate >= threshold, transitively; latest survives."""
    n = sigs.shape[0]
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for i in range(n):
        for j in range(i + 1, n):
            if (bands[i] == bands[j]).any() and np.mean(sigs[i] == sigs[j]) >= threshold:
                parent[max(find(i), find(j))] = min(find(i), find(j))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    out = {}
    for members in groups.values():
        top = max(members)  # timestamps equal the index: the last one is the latest
        out.update({f"d{i:04d}": f"d{top:04d}" for i in members if i != top})
    return out


def _perturb(rng: np.random.Generator, base: np.ndarray, bands: range) -> np.ndarray:
    """A near-duplicate of `base`: one fresh value in each band of `bands` (so it shares only the others)."""
    out = base.copy()
    for b in bands:
        out[b * ROWS + rng.integers(ROWS)] = rng.integers(1 << 32, dtype=np.uint64)
    return out


def test_chain_through_an_unrelated_document_in_the_bucket(tmp_path: Path) -> None:
    """A ~ C (estimate 0.9) share only band 0; B shares band 0 with both (estimate 0.07) and sorts
    between them in that bucket. Comparing neighbours only checks A-B and B-C and never links A-C."""
    rng = np.random.default_rng(0)
    a = rng.integers(1 << 32, size=PERM, dtype=np.uint64).astype(np.uint32)
    c = _perturb(rng, a, range(1, BANDS))
    b = rng.integers(1 << 32, size=PERM, dtype=np.uint64).astype(np.uint32)
    b[:ROWS] = a[:ROWS]
    sigs = np.stack([a, b, c])
    assert abs(np.mean(a == c) - 115 / 128) < 1e-9 and np.mean(a == b) < 0.1 and np.mean(b == c) < 0.1
    for n_shards in (1, 2, 3):
        work = tmp_path / f"s{n_shards}"
        work.mkdir()
        bands = _write_shards(work, sigs, n_shards)
        assert (bands[0] == bands[2]).sum() == 1 and bands[0, 0] == bands[1, 0]
        stats = MinHashDedup().reduce(work, n_shards)
        assert _removed(work, n_shards, 3) == {"d0000": "d0002"}
        assert stats["candidate_pairs"] == 3 and stats["verified_pairs"] == 1 and stats["verify_buckets_capped"] == 0


def _mixed_bucket(rng: np.random.Generator, n_clusters: int, size: int, n_single: int) -> np.ndarray:
    """Every document shares band 0; clusters of near-duplicates (pairwise estimate ~0.8, sharing only
    band 0 with each other) are interleaved at random with unrelated documents."""
    common = rng.integers(1 << 32, size=ROWS, dtype=np.uint64).astype(np.uint32)
    rows = []
    for _ in range(n_clusters):
        base = rng.integers(1 << 32, size=PERM, dtype=np.uint64).astype(np.uint32)
        base[:ROWS] = common
        rows += [_perturb(rng, base, range(1, BANDS)) for _ in range(size)]
    for _ in range(n_single):
        x = rng.integers(1 << 32, size=PERM, dtype=np.uint64).astype(np.uint32)
        x[:ROWS] = common
        rows.append(x)
    sigs = np.stack(rows)
    return sigs[rng.permutation(len(rows))]


def test_large_mixed_bucket_matches_brute_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    sigs = _mixed_bucket(rng, n_clusters=25, size=4, n_single=100)
    bands = _write_shards(tmp_path, sigs, 3)
    want = _reference(sigs, bands, 0.7)
    assert len(want) == 25 * 3  # every cluster is found by brute force
    stats = MinHashDedup().reduce(tmp_path, 3)  # default bound 256 > 200 members
    assert _removed(tmp_path, 3, len(sigs)) == want
    assert stats["verify_buckets_capped"] == 0 and stats["verify_pairs_skipped"] == 0
    assert stats["removed"] == 75 and stats["clusters"] == 25


def test_bucket_over_the_bound_is_windowed_and_counted(tmp_path: Path) -> None:
    """Past `verify_max_bucket` = M, each member is checked against the next M - 1 only: every link made
    is still a verified one (a subset of the brute force), and the unchecked pairs are counted."""
    rng = np.random.default_rng(2)
    sigs = _mixed_bucket(rng, n_clusters=25, size=4, n_single=100)
    _write_shards(tmp_path, sigs, 2)
    want = _reference(sigs, mh.band_hashes(sigs, BANDS, ROWS), 0.7)
    m, k = 16, len(sigs)
    stats = MinHashDedup(verify_max_bucket=m).reduce(tmp_path, 2)
    got = _removed(tmp_path, 2, k)
    assert stats["verify_buckets_capped"] == 1
    assert stats["verify_pairs_skipped"] == (k - m) * (k - m + 1) // 2
    assert stats["verify_max_bucket"] == m
    assert set(got) <= set(want) and len(got) < len(want)


def test_capped_buckets_reach_the_ledger_and_report(tmp_path: Path) -> None:
    """Through the executor: the reduce's counts land in ledger.json and in the printed funnel."""
    import json

    from ilm.data import run_pipeline
    from ilm.data.document import Document
    from ilm.data.report import funnel_table

    from .conftest import write_shards

    text = " ".join(f"word{i}" for i in range(40))
    docs = [Document(f"d{i}", text, "s", i) for i in range(5)]  # one bucket of 5 in every band
    run_pipeline([MinHashDedup(verify_max_bucket=3)], write_shards(tmp_path / "in", docs, 2), tmp_path / "out")
    g = json.loads((tmp_path / "out" / "ledger.json").read_text())["global"]["minhash_dedup"]
    assert g["verify_buckets_capped"] == 14 and g["verify_pairs_skipped"] == 14 * 3 and g["verify_max_bucket"] == 3
    assert g["removed"] == 4  # the window still chains the identical documents into one cluster
    table = funnel_table(json.loads((tmp_path / "out" / "ledger.json").read_text()))
    assert "minhash_dedup: " in table and "verify_buckets_capped 14" in table and "verify_pairs_skipped 42" in table
