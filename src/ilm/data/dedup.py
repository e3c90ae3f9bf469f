"""Exact and MinHash near-duplicate removal as global steps; the most recent document of a cluster survives.

Each shard's collector streams compact per-document data to disk (hashes, never texts): MinHash keeps
14 band hashes (uint64) and the 128-value signature (uint32) per document in raw .u64/.u32 files, plus
id and timestamp in parquet. `reduce` reads one band column at a time through memory maps, links
documents that share a band bucket (optionally verifying the estimated Jaccard >= threshold from the full
signatures, for every pair of a bucket of up to `verify_max_bucket` members), joins them with a
union-find, and picks each cluster's survivor: latest timestamp, ties broken by the larger id. Memory is
O(documents) small integers, independent of text size.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ilm.data import minhash as mh
from ilm.data.base import Context, GlobalStep
from ilm.data.document import Document
from ilm.data.io import atomic_write_bytes, fsync_replace


def _write_meta(path: Path, ids: list[str], ts: list[float], extra: dict[str, list] | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"id": pa.array(ids, pa.string()), "ts": pa.array(ts, pa.float64())}
    for k, v in (extra or {}).items():
        cols[k] = pa.array(v)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table(cols), tmp)
    fsync_replace(tmp, path)


def select_survivors(labels: np.ndarray, ts: np.ndarray, ids_of: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For cluster labels over N documents: (removed indices, their survivor index, cluster sizes).

    The survivor of each cluster has the largest timestamp; equal timestamps fall to the larger id, so
    the choice depends only on the documents, never on shard order. `ids_of(indices)` returns ids.
    """
    sizes = np.bincount(labels)
    member = np.flatnonzero(sizes[labels] > 1)
    if member.size == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e
    ids = np.asarray(ids_of(member), dtype=object)
    id_rank = np.empty(member.size, dtype=np.int64)
    id_rank[np.argsort(ids.astype(str), kind="stable")] = np.arange(member.size)
    lab = labels[member]
    order = np.lexsort((id_rank, ts[member], lab))
    lab_sorted = lab[order]
    last = np.r_[lab_sorted[1:] != lab_sorted[:-1], True]
    winner_of_label = {int(lab_sorted[i]): int(member[order[i]]) for i in np.flatnonzero(last)}
    removed = member[order[~last]]
    survivor = np.array([winner_of_label[int(x)] for x in labels[removed]], dtype=np.int64)
    return removed, survivor, sizes[labels[removed]]


@dataclass
class _Dedup(GlobalStep):
    """Shared reduce output and apply pass: one `drop-XXXXX.parquet` per shard (local index, survivor id)."""

    type: ClassVar[str] = "dedup"
    reason: ClassVar[str] = "duplicate"

    def _meta(self, work_dir: Path, n_shards: int) -> tuple[list[Any], np.ndarray, np.ndarray]:
        import pyarrow.parquet as pq

        tables = [pq.read_table(work_dir / f"meta-{i:05d}.parquet") for i in range(n_shards)]
        counts = np.array([t.num_rows for t in tables], dtype=np.int64)
        ts = np.concatenate([t.column("ts").to_numpy() for t in tables]) if tables else np.zeros(0)
        return tables, counts, ts

    def _write_decisions(self, work_dir: Path, tables: list[Any], counts: np.ndarray, labels: np.ndarray, ts: np.ndarray) -> dict[str, int]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        offsets = np.concatenate([[0], np.cumsum(counts)])

        def ids_of(idx: np.ndarray) -> list[str]:
            shard = np.searchsorted(offsets, idx, side="right") - 1
            out = [""] * idx.size
            for s in np.unique(shard):
                sel = np.flatnonzero(shard == s)
                col = tables[s].column("id").take(pa.array(idx[sel] - offsets[s])).to_pylist()
                for k, v in zip(sel, col):
                    out[k] = v
            return out

        removed, survivor, size = select_survivors(labels, ts, ids_of)
        surv_ids = ids_of(survivor) if survivor.size else []
        shard = np.searchsorted(offsets, removed, side="right") - 1
        for s in range(len(tables)):
            sel = np.flatnonzero(shard == s)
            local = removed[sel] - offsets[s]
            order = np.argsort(local)
            t = pa.table(
                {
                    "idx": pa.array(local[order], pa.int64()),
                    "duplicate_of": pa.array([surv_ids[k] for k in sel[order]], pa.string()),
                    "cluster_size": pa.array(size[sel][order], pa.int64()),
                }
            )
            tmp = work_dir / f"drop-{s:05d}.parquet.tmp"
            pq.write_table(t, tmp)
            fsync_replace(tmp, work_dir / f"drop-{s:05d}.parquet")
        n_clusters = int(np.unique(labels[np.bincount(labels)[labels] > 1]).size) if labels.size else 0
        return {"documents": int(labels.size), "clusters": n_clusters, "removed": int(removed.size)}

    def run(self, docs: Iterator[Document], ctx: Context) -> Iterator[Document]:
        import pyarrow.parquet as pq

        t = pq.read_table(ctx.work_dir / f"drop-{ctx.shard:05d}.parquet")
        drop = dict(zip(t.column("idx").to_pylist(), zip(t.column("duplicate_of").to_pylist(), t.column("cluster_size").to_pylist())))
        for i, doc in enumerate(docs):
            hit = drop.get(i)
            if hit is None:
                yield doc
            else:
                ctx.drop(doc, self.reason, duplicate_of=hit[0], cluster_size=hit[1])


def normalise_for_exact(text: str) -> str:
    """What "the same text" means for exact dedup: NFC, case-folded, whitespace runs collapsed."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


class _ExactCollector:
    def __init__(self, work_dir: Path, shard: int):
        self.work_dir, self.shard = work_dir, shard
        self.keys: list[int] = []
        self.ids: list[str] = []
        self.ts: list[float] = []

    def add(self, doc: Document) -> None:
        import xxhash

        self.keys.append(xxhash.xxh3_128_intdigest(normalise_for_exact(doc.text).encode("utf-8", "surrogatepass")))
        self.ids.append(doc.id)
        self.ts.append(doc.time_seconds())

    def close(self) -> None:
        arr = np.array([[k >> 64, k & (2**64 - 1)] for k in self.keys], dtype=np.uint64).reshape(-1, 2)
        atomic_write_bytes(self.work_dir / f"keys-{self.shard:05d}.u64", arr.tobytes())
        _write_meta(self.work_dir / f"meta-{self.shard:05d}.parquet", self.ids, self.ts)


@dataclass
class ExactDedup(_Dedup):
    """Removes documents whose normalised text (128-bit xxh3) equals a more recent document's."""

    type: ClassVar[str] = "exact_dedup"
    reason: ClassVar[str] = "exact_duplicate"

    def collector(self, work_dir: Path, shard: int) -> _ExactCollector:
        return _ExactCollector(work_dir, shard)

    def reduce(self, work_dir: Path, n_shards: int) -> dict[str, Any]:
        tables, counts, ts = self._meta(work_dir, n_shards)
        keys = [np.fromfile(work_dir / f"keys-{i:05d}.u64", dtype=np.uint64).reshape(-1, 2) for i in range(n_shards)]
        allk = np.concatenate(keys) if keys else np.zeros((0, 2), np.uint64)
        if allk.shape[0] == 0:
            labels = np.zeros(0, dtype=np.int64)
        else:
            _, labels = np.unique(allk, axis=0, return_inverse=True)
        return self._write_decisions(work_dir, tables, counts, labels.reshape(-1).astype(np.int64), ts)


class _MinHashCollector:
    def __init__(self, step: MinHashDedup, work_dir: Path, shard: int):
        self.step, self.work_dir, self.shard = step, work_dir, shard
        self.texts: list[str] = []
        self.size = 0
        self.ids: list[str] = []
        self.ts: list[float] = []
        self.n_sh: list[int] = []
        self.f_sig = open(work_dir / f"sig-{shard:05d}.u32.tmp", "wb")  # noqa: SIM115 - closed in close()
        self.f_band = open(work_dir / f"bands-{shard:05d}.u64.tmp", "wb")  # noqa: SIM115

    def add(self, doc: Document) -> None:
        self.texts.append(doc.text)
        self.size += len(doc.text)
        self.ids.append(doc.id)
        self.ts.append(doc.time_seconds())
        if len(self.texts) >= 2048 or self.size > (16 << 20):
            self._flush()

    def _flush(self) -> None:
        if not self.texts:
            return
        s = self.step
        hashes, counts = mh.shingle_hashes(self.texts, s.ngram)
        sig = mh.minhash_from_hashes(hashes, counts, s.num_perm, s.seed)
        self.f_sig.write(sig.tobytes())
        self.f_band.write(mh.band_hashes(sig, s.bands, s.rows).tobytes())
        self.n_sh.extend(counts.tolist())
        self.texts, self.size = [], 0

    def close(self) -> None:
        self._flush()
        for f in (self.f_sig, self.f_band):
            f.close()
            fsync_replace(f.name, f.name[: -len(".tmp")])
        _write_meta(self.work_dir / f"meta-{self.shard:05d}.parquet", self.ids, self.ts, {"n_shingles": self.n_sh})


@dataclass
class MinHashDedup(_Dedup):
    """Near-duplicate removal exactly as the seed: word 5-grams (character 5-grams for Chinese-like
    scripts), 128 hashes, Jaccard 0.7, 14 bands x 9 rows, union-find, most recent survives."""

    type: ClassVar[str] = "minhash_dedup"
    reason: ClassVar[str] = "near_duplicate"
    ngram: int = mh.NGRAM
    num_perm: int = mh.NUM_PERM
    threshold: float = mh.THRESHOLD
    bands: int = 14
    rows: int = 9
    verify: bool = True  # drop LSH candidate pairs whose signature estimate is below the threshold
    verify_max_bucket: int = 256  # all pairs of a bucket up to this size; past it, a window of this size
    seed: int = 1

    def __post_init__(self) -> None:
        if self.verify_max_bucket < 2:
            raise ValueError(f"verify_max_bucket = {self.verify_max_bucket} must be at least 2")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")

    def collector(self, work_dir: Path, shard: int) -> _MinHashCollector:
        return _MinHashCollector(self, work_dir, shard)

    def reduce(self, work_dir: Path, n_shards: int) -> dict[str, Any]:
        tables, counts, ts = self._meta(work_dir, n_shards)
        n = int(counts.sum())
        offsets = np.concatenate([[0], np.cumsum(counts)])
        valid = np.concatenate([t.column("n_shingles").to_numpy() for t in tables]) > 0 if tables else np.zeros(0, bool)
        bands = [self._mmap(work_dir / f"bands-{i:05d}.u64", np.uint64, counts[i], self.bands) for i in range(n_shards)]
        sigs = [self._mmap(work_dir / f"sig-{i:05d}.u32", np.uint32, counts[i], self.num_perm) for i in range(n_shards)]
        parent = np.arange(n, dtype=np.int64)
        idx = np.flatnonzero(valid)
        stats = {"candidate_pairs": 0, "verified_pairs": 0, "verify_buckets_capped": 0, "verify_pairs_skipped": 0}
        for b in range(self.bands):
            col = np.concatenate([m[:, b] for m in bands]) if bands else np.zeros(0, np.uint64)
            c = col[idx]
            order = np.argsort(c, kind="stable")
            keep_u, keep_v = [], []
            for pa, pb in self._bucket_pairs(c[order], stats):
                u, v = idx[order[pa]], idx[order[pb]]
                live = parent[u] != parent[v]  # parent is fully compressed after each band's union
                u, v = u[live], v[live]
                stats["candidate_pairs"] += int(u.size)
                if self.verify and u.size:
                    est = np.empty(u.size)
                    for k0 in range(0, u.size, 65536):
                        su = self._gather(sigs, offsets, u[k0 : k0 + 65536])
                        sv = self._gather(sigs, offsets, v[k0 : k0 + 65536])
                        est[k0 : k0 + 65536] = mh.jaccard_estimate(su, sv)
                    ok = est >= self.threshold
                    u, v = u[ok], v[ok]
                stats["verified_pairs"] += int(u.size)
                keep_u.append(u)
                keep_v.append(v)
            if keep_u:
                parent = mh.union(parent, np.concatenate(keep_u), np.concatenate(keep_v))
        out = self._write_decisions(work_dir, tables, counts, parent, ts)
        return {**out, **stats, "verify_max_bucket": self.verify_max_bucket}

    def _bucket_pairs(self, cs: np.ndarray, stats: dict[str, int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Candidate pairs (positions in the sorted band column `cs`), one distance d at a time.

        Without verification, adjacent members (d = 1) chain a bucket into one cluster, which is all
        the bucket says. With it, every pair of a bucket is a candidate on its own: a document sorting
        between two near-duplicates must not hide them from each other. A bucket larger than
        `verify_max_bucket` (M) is bounded: each member is checked against the next M - 1 members in
        bucket order (input order), the pairs further apart are not checked and do not link through this
        band; such buckets and pairs are counted (`verify_buckets_capped`, `verify_pairs_skipped`).
        Work is proportional to the pairs produced: members leave the loop once d passes their bucket.
        """
        starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]]) if cs.size else np.zeros(0, np.int64)
        sizes = np.diff(np.r_[starts, cs.size])
        multi = sizes > 1
        st, sz = starts[multi], sizes[multi]
        if st.size == 0:
            return
        max_d = min(int(sz.max()), self.verify_max_bucket) if self.verify else 2
        if self.verify:
            big = sz[sz > self.verify_max_bucket] - self.verify_max_bucket
            stats["verify_buckets_capped"] += int(big.size)
            stats["verify_pairs_skipped"] += int((big * (big + 1) // 2).sum())
        first = np.cumsum(sz) - sz
        mem = np.repeat(st, sz) + (np.arange(int(sz.sum())) - np.repeat(first, sz))
        end = np.repeat(st + sz, sz)
        for d in range(1, max_d):
            ok = mem + d < end
            mem, end = mem[ok], end[ok]
            yield mem, mem + d

    @staticmethod
    def _mmap(path: Path, dtype: Any, rows: int, cols: int) -> np.ndarray:
        if rows == 0:
            return np.zeros((0, cols), dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(int(rows), cols))

    @staticmethod
    def _gather(mats: list[np.ndarray], offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(offsets, rows, side="right") - 1
        out = np.empty((rows.size, mats[0].shape[1]), dtype=mats[0].dtype)
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            local = rows[sel] - offsets[s]
            srt = np.argsort(local)
            out[sel[srt]] = mats[s][local[srt]]
        return out


def describe(step: MinHashDedup) -> str:
    """One line for logs and the report."""
    return json.dumps({"ngram": step.ngram, "num_perm": step.num_perm, "threshold": step.threshold, "bands": step.bands, "rows": step.rows})
