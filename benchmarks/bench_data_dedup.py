"""End-to-end near-dedup of 1,000,000 short documents on this machine: wall time and peak RSS of the
whole process tree (driver + workers), target < 2 GB. The corpus is generated first and not timed:
documents of 20-60 words drawn from the word distribution of Python's own docs (so they are distinct),
of which the last 10% are near-duplicates (one word replaced) of earlier ones. Set ILM_BENCH_DEDUP_DOCS to scale."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _tree_rss(root: int) -> int:
    """Sum of VmRSS (bytes) of `root` and all its descendants, from /proc."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def make_corpus(folder: Path, n_docs: int, n_shards: int = 16, seed: int = 0) -> dict:
    """Writes the shards; returns the planted (original, copy) index pairs."""
    import numpy as np

    from ilm.data.corpus import real_texts
    from ilm.data.document import Document
    from ilm.data.io import ShardWriter

    vocab = np.array(" ".join(real_texts(min_words=60, max_docs=1200)).split(), dtype=object)
    rng = np.random.default_rng(seed)
    n_dup = n_docs // 10
    n_orig = n_docs - n_dup
    lens = rng.integers(30, 80, n_orig)
    offs = np.concatenate([[0], np.cumsum(lens)])
    words = vocab[rng.integers(0, len(vocab), int(offs[-1]))]
    src = rng.choice(n_orig, n_dup, replace=False)  # one copy per original: pairs are unambiguous
    pos: list[int] = []
    writers = [ShardWriter(folder / f"part-{i:03d}.jsonl.zst") for i in range(n_shards)]
    for i in range(n_docs):
        if i < n_orig:
            text = " ".join(words[offs[i] : offs[i + 1]])
        else:  # a near-duplicate of an earlier document: one word replaced
            j = src[i - n_orig]
            w = list(words[offs[j] : offs[j + 1]])
            pos.append(int(rng.integers(0, len(w))))
            w[pos[-1]] = "EDITED"
            text = " ".join(w)
        writers[i % n_shards].write(Document(f"doc{i:07d}", text, "bench", 1_600_000_000 + i))
    for w in writers:
        w.close()
    return {"pairs": [(int(j), n_orig + k, p) for k, (j, p) in enumerate(zip(src, pos))], "texts": (words, offs)}


def planted_recall(planted: dict, removed_ids: set[str], sample: int = 5000) -> dict:
    """Exact 5-gram J of a sample of planted pairs; recall (older copy removed, newer kept) by J band."""
    from ilm.data.minhash import shingles

    words, offs = planted["texts"]
    bands = {"J>=0.8": [0, 0], "0.7<=J<0.8": [0, 0], "J<0.7": [0, 0]}
    for j, i, p in planted["pairs"][:sample]:
        w = list(words[offs[j] : offs[j + 1]])
        a = shingles(" ".join(w))
        w[p] = "EDITED"
        b = shingles(" ".join(w))
        jac = len(a & b) / len(a | b)
        key = "J>=0.8" if jac >= 0.8 else ("0.7<=J<0.8" if jac >= 0.7 else "J<0.7")
        bands[key][1] += 1
        bands[key][0] += f"doc{j:07d}" in removed_ids and f"doc{i:07d}" not in removed_ids
    return {k: {"pairs": n, "merged_newer_kept": h, "rate": round(h / max(n, 1), 4)} for k, (h, n) in bands.items()}


def main() -> dict:
    n_docs = int(os.environ.get("ILM_BENCH_DEDUP_DOCS", "1000000"))
    workers = int(os.environ.get("ILM_BENCH_WORKERS", str(min(os.cpu_count() or 1, 2))))
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        (tmp_p / "in").mkdir()
        t0 = time.perf_counter()
        planted = make_corpus(tmp_p / "in", n_docs)
        n_dup = len(planted["pairs"])
        gen_s = time.perf_counter() - t0
        in_mb = sum(p.stat().st_size for p in (tmp_p / "in").iterdir()) / 1e6
        cmd = [sys.executable, "-m", "ilm.cli", "data", "run", str(root / "recipes/data/minhash-only.toml"),
               "-i", str(tmp_p / "in"), "-o", str(tmp_p / "out"), "-q", "-j", str(workers)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = [0]

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                time.sleep(0.05)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _out, err = proc.communicate()
        wall = time.perf_counter() - t0
        th.join()
        if proc.returncode != 0:
            raise RuntimeError(err[-3000:])
        import json

        ledger = json.loads((tmp_p / "out" / "ledger.json").read_text())
        timings = json.loads((tmp_p / "out" / "timings.json").read_text())
        import pyarrow.parquet as pq

        removed_ids = set()
        for f in (tmp_p / "out" / "global" / "minhash_dedup").glob("drop-*.parquet"):
            shard = int(f.stem.split("-")[1])
            # local index k of shard s is document number s + 16 k (round-robin writing)
            removed_ids.update(f"doc{shard + 16 * k:07d}" for k in pq.read_table(f).column("idx").to_pylist())
        recall = planted_recall(planted, removed_ids)
    removed = ledger["removed_docs"]
    res = {
        "documents": n_docs, "workers": workers, "input_mb_zstd": round(in_mb, 1), "planted_near_duplicates": n_dup,
        "removed_near_duplicates": removed, "wall_s": round(wall, 1), "docs_per_s": round(n_docs / wall),
        "peak_rss_tree_mb": round(peak[0] / 1e6), "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "corpus_generation_s": round(gen_s, 1), "planted_recall_by_jaccard": recall,
    }
    print(f"near-dedup of {n_docs:,} short documents, {workers} worker processes, input {in_mb:.0f} MB (jsonl.zst)")
    print(f"  wall {wall:.1f} s ({n_docs / wall:,.0f} docs/s), peak RSS of the process tree {peak[0] / 1e6:,.0f} MB (target < 2000)")
    print("  passes: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    print(f"  planted near-duplicates {n_dup:,}; removed {removed:,}")
    for k, v in recall.items():
        print(f"  planted pairs {k:<11} {v['pairs']:>6,} sampled, older removed and newer kept: {v['rate']:.3f}")
    return res


if __name__ == "__main__":
    main()
