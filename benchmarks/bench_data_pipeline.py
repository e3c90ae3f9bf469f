"""The default (InternLM2) pipeline's throughput in MB/s per core: one worker process over the demo
corpus scaled up (real Python-docs text, each copy re-edited so it is not a duplicate, plus the planted
junk). Input MB = UTF-8 text bytes of the documents read; model loading is included (one-time costs)."""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path


def make_corpus(folder: Path, copies: int, n_shards: int = 4) -> int:
    from ilm.data.corpus import demo_documents, edit_words
    from ilm.data.io import ShardWriter

    docs, _ = demo_documents(n_real=1100)
    rng = random.Random(0)
    vocab = sorted({w for d in docs[:200] for w in d.text.split() if w.isalpha()})
    writers = [ShardWriter(folder / f"part-{i:02d}.jsonl.zst") for i in range(n_shards)]
    n = 0
    for c in range(copies):
        for d in docs:
            text = d.text if c == 0 or d.metadata.get("format") == "html" else edit_words(d.text, 0.35, rng, vocab)
            rec = type(d)(f"{d.id}-c{c}", text, d.source, d.timestamp, dict(d.metadata))
            writers[n % n_shards].write(rec)
            n += 1
    for w in writers:
        w.close()
    return n


def main() -> dict:
    import os

    from ilm.data import run_pipeline

    copies = int(os.environ.get("ILM_BENCH_PIPELINE_COPIES", "30"))
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "in").mkdir()
        n = make_corpus(t / "in", copies)
        t0 = time.perf_counter()
        led = run_pipeline(root / "recipes/data/internlm2.toml", t / "in", t / "out", workers=1)
        wall = time.perf_counter() - t0
        timings = json.loads((t / "out" / "timings.json").read_text())
    mb = led["input_bytes"] / 1e6
    res = {"documents": n, "input_mb": round(mb, 2), "kept_docs": led["kept_docs"], "wall_s": round(wall, 1),
           "mb_per_s_per_core": round(mb / wall, 2), "docs_per_s_per_core": round(n / wall),
           "timings_s": {k: round(v, 2) for k, v in timings.items()}}
    print(f"default pipeline (recipes/data/internlm2.toml), 1 worker: {n:,} docs, {mb:.1f} MB of text")
    print(f"  wall {wall:.1f} s -> {mb / wall:.2f} MB/s per core, {n / wall:,.0f} docs/s per core; kept {led['kept_docs']:,}")
    print("  " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    funnel = ", ".join(f"{r['step']} -{r['removed_docs']}" for r in led["funnel"] if r["removed_docs"])
    print(f"  removed per step: {funnel}")
    return res


if __name__ == "__main__":
    main()
