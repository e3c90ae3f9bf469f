"""The default (InternLM2) pipeline's throughput in MB/s per core: one worker process over the demo
corpus scaled up (real Python-docs text, each copy re-edited so it is not a duplicate, plus the planted
junk). Input MB = UTF-8 text bytes of the documents read; model loading is included (one-time costs).
The same run times a baseline commit's code on the same corpus and checks both decide the same."""

from __future__ import annotations

import json
import random
import tempfile
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


_CHILD = """
import json, sys, time
from ilm.data import run_pipeline
t0, c0 = time.perf_counter(), time.process_time()
led = run_pipeline(sys.argv[1], sys.argv[2], sys.argv[3], workers=1)
print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "input_bytes": led["input_bytes"], "ledger": led}))
"""


def _baseline_src(root: Path, rev: str, dest: Path) -> Path | None:
    """`src/` of commit `rev` (git archive), to time the code before a change in the same run."""
    import io
    import subprocess
    import tarfile

    try:
        data = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", rev, "src"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def _run(src: Path, recipe: Path, inputs: Path, out: Path) -> dict:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(recipe), str(inputs), str(out)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _outcome(out: Path) -> dict:
    """What the run decided: kept ids, (id, step, reason) of every removed document, the funnel."""
    from ilm.data.io import read_all

    kept = sorted(d.id for d in read_all(out / "kept"))
    removed = sorted((d.id, d.metadata["removed"]["step"], d.metadata["removed"]["reason"]) for d in read_all(out / "removed"))
    funnel = json.loads((out / "ledger.json").read_text())["funnel"]
    return {"kept": kept, "removed": removed, "funnel": funnel}


def main() -> dict:
    """Before (the baseline commit's src, ILM_BENCH_PIPELINE_BASELINE, "" to skip) and after (this
    tree's src), each ILM_BENCH_PIPELINE_REPEATS times, interleaved, in fresh processes; best of each.
    The two must keep and remove exactly the same documents for the same reasons, or this fails."""
    import os
    import shutil

    copies = int(os.environ.get("ILM_BENCH_PIPELINE_COPIES", "30"))
    repeats = int(os.environ.get("ILM_BENCH_PIPELINE_REPEATS", "3"))
    rev = os.environ.get("ILM_BENCH_PIPELINE_BASELINE", "aa57b51")
    root = Path(__file__).resolve().parents[1]
    recipe = root / "recipes/data/internlm2.toml"
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "in").mkdir()
        n = make_corpus(t / "in", copies)
        srcs = {"after": root / "src"}
        base = _baseline_src(root, rev, t / "base") if rev else None
        if base is not None:
            srcs = {"before": base, **srcs}
        best: dict[str, dict] = {}
        best_cpu: dict[str, float] = {}
        outcome: dict[str, dict] = {}
        for r in range(repeats):
            labels = list(srcs) if r % 2 == 0 else list(srcs)[::-1]
            for label in labels:
                out = t / f"out-{label}"
                shutil.rmtree(out, ignore_errors=True)
                res = _run(srcs[label], recipe, t / "in", out)
                if label not in best or res["wall"] < best[label]["wall"]:
                    best[label] = res
                best_cpu[label] = min(best_cpu.get(label, float("inf")), res["cpu"])
                outcome[label] = _outcome(out)
        if "before" in outcome:
            for k in ("kept", "removed", "funnel"):
                if outcome["before"][k] != outcome["after"][k]:
                    raise AssertionError(f"the pipeline's {k} changed against {rev}")
        timings = json.loads((t / "out-after" / "timings.json").read_text())
    led = best["after"]["ledger"]
    mb = led["input_bytes"] / 1e6
    rate = {k: mb / v["wall"] for k, v in best.items()}
    cpu_rate = {k: mb / v for k, v in best_cpu.items()}  # per CPU second: less sensitive to other jobs
    wall = best["after"]["wall"]
    res = {"documents": n, "input_mb": round(mb, 2), "kept_docs": led["kept_docs"], "wall_s": round(wall, 1),
           "mb_per_s_per_core": round(rate["after"], 2), "docs_per_s_per_core": round(n / wall),
           "mb_per_cpu_s": round(cpu_rate["after"], 2),
           "timings_s": {k: round(v, 2) for k, v in timings.items()}, "repeats": repeats}
    print(f"default pipeline (recipes/data/internlm2.toml), 1 worker: {n:,} docs, {mb:.1f} MB of text, best of {repeats}")
    if "before" in rate:
        res.update({"baseline": rev, "mb_per_s_per_core_before": round(rate["before"], 2),
                    "mb_per_cpu_s_before": round(cpu_rate["before"], 2), "speedup": round(rate["after"] / rate["before"], 2),
                    "speedup_cpu": round(cpu_rate["after"] / cpu_rate["before"], 2), "same_documents_as_baseline": True})
        print(f"  before ({rev}): {rate['before']:.2f} MB/s per core, wall {best['before']['wall']:.1f} s; "
              f"{cpu_rate['before']:.2f} MB per CPU second")
    print(f"  wall {wall:.1f} s -> {rate['after']:.2f} MB/s per core, {n / wall:,.0f} docs/s per core; kept {led['kept_docs']:,}; "
          f"{cpu_rate['after']:.2f} MB per CPU second")
    if "before" in rate:
        print(f"  speedup {rate['after'] / rate['before']:.2f}x (wall), {cpu_rate['after'] / cpu_rate['before']:.2f}x (CPU time); "
              "kept and removed documents (ids, steps, reasons) identical")
    print("  " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    funnel = ", ".join(f"{r['step']} -{r['removed_docs']}" for r in led["funnel"] if r["removed_docs"])
    print(f"  removed per step: {funnel}")
    return res


if __name__ == "__main__":
    main()
