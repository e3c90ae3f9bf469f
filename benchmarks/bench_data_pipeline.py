"""Text filters against datatrove: MB/s per core of ilm's Gopher quality -> Gopher repetition -> C4 and
datatrove's GopherQualityFilter -> GopherRepetitionFilter -> C4QualityFilter (its LocalPipelineExecutor,
JsonlReader -> the three filters -> JsonlWriter) on the same documents with 2 worker processes each,
plus how far their kept sets agree (Jaccard of kept ids).

Documents: made here, nothing downloaded: the demo corpus's Python-docs texts (`ilm.data.corpus`),
copied with 35% of the words replaced, several texts joined into one page, plus the planted junk; HTML
records are left out (neither side's comparable steps extract HTML). Written as plain .jsonl shards
(4), which both readers take. Input MB = UTF-8 bytes of the documents' text.

Sides, each in its own fresh process per run, interleaved (round r runs them in order, round r+1 in
reverse), `ILM_BENCH_PIPELINE_ROUNDS` (3) rounds; the median over rounds with its range:
- ilm: the three steps with the recipe's defaults (`run_pipeline`, workers = 2);
- datatrove: the three filters with their defaults but `filter_curly_bracket=False` (ilm's C4 keeps
  code, `drop_curly_bracket = false`), English; its default English word tokenizer is spaCy's
  (`spacy.blank("en")`, loaded in each task);
- datatrove, `str.split` words: the same with a word tokenizer that splits on whitespace as ilm does
  (sentences still from spaCy, for C4's sentence count);
- ilm, full default pipeline (`recipes/data/internlm2.toml`: + normalisation, language ID, dedup,
  safety, toxicity): what a user runs, for scale.
Language ID is not among the compared steps: datatrove's LanguageFilter downloads its fastText model,
and nothing here downloads.

datatrove lives in its own directory, not in the dev environment (`make bench` runs `pip install --target
.venv/datatrove datatrove==0.10.1 spacy==3.8.18 orjson==3.13.0`, with their dependencies; $ILM_DATATROVE overrides the path), first on sys.path of the
child processes that run it. Without it those sides are skipped and said so.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATATROVE = Path(os.environ.get("ILM_DATATROVE", REPO / ".venv" / "datatrove"))
DATATROVE_VERSION = "0.10.1"
WORKERS, SHARDS = 2, 4
ILM_STEPS = ("gopher_quality", "gopher_repetition", "c4")


def make_corpus(folder: Path, target_mb: float, n_shards: int = SHARDS, per_page: int = 6) -> tuple[int, int]:
    """Shards of edited, joined demo texts until `target_mb` MB of text; returns (documents, text bytes)."""
    from ilm.data.corpus import demo_documents, edit_words
    from ilm.data.document import Document
    from ilm.data.io import ShardWriter

    docs, _ = demo_documents(n_real=1100)
    docs = [d for d in docs if d.metadata.get("format") != "html"]
    real = [d for d in docs if d.source in ("python-docs", "mirror")]
    other = [d for d in docs if d.source not in ("python-docs", "mirror")]
    rng = random.Random(0)
    vocab = sorted({w for d in real[:200] for w in d.text.split() if w.isalpha()})
    writers = [ShardWriter(folder / f"part-{i:02d}.jsonl") for i in range(n_shards)]
    n = size = c = 0
    while size < target_mb * 1e6:
        pages = [Document(f"{d.id}-c{c}", d.text, d.source, d.timestamp, {}) for d in other]
        order = rng.sample(real, len(real))
        for k in range(0, len(order), per_page):
            texts = [edit_words(d.text, 0.35, rng, vocab) if c else d.text for d in order[k : k + per_page]]
            pages.append(Document(f"page-{k // per_page:04d}-c{c}", "\n\n".join(texts), "python-docs", 0, {}))
        for d in pages:
            writers[n % n_shards].write(d)
            n += 1
            size += len(d.text.encode("utf-8"))
        c += 1
    for w in writers:
        w.close()
    return n, size


def _tiny_corpus(folder: Path) -> None:
    """One short document per shard: a run on it is the side's fixed cost (start-up, imports, loading)."""
    from ilm.data.document import Document
    from ilm.data.io import ShardWriter

    for i in range(SHARDS):
        w = ShardWriter(folder / f"part-{i:02d}.jsonl")
        w.write(Document(f"tiny-{i}", "The cat sat on the mat. " * 20, "tiny", 0, {}))
        w.close()


_ILM_CHILD = """
import json, sys, time
from ilm.data import run_pipeline
from ilm.data.recipe import load_recipe
t0 = time.perf_counter()
led = run_pipeline(sys.argv[1], sys.argv[2], sys.argv[3], workers=int(sys.argv[4]), output_format="jsonl")
wall = time.perf_counter() - t0
steps = [{"type": s.type, **{k: v for k, v in vars(s).items() if not k.startswith("_")}} for s in load_recipe(sys.argv[1])[0]]
print(json.dumps({"wall": wall, "kept_docs": led["kept_docs"], "settings": steps}, default=str))
"""

# datatrove's side (run with its directory first on sys.path); argv: inputs, out, logs, workers, tasks, words
_DT_CHILD = """
import json, sys, time
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.word_tokenizers import WordTokenizer

class SplitWords(WordTokenizer):
    '''Words = str.split (as ilm); sentences from datatrove's default English tokenizer.'''
    def word_tokenize(self, text):
        return text.split()
    def sent_tokenize(self, text):
        from datatrove.utils.word_tokenizers import load_word_tokenizer  # (sent to workers by value)
        return load_word_tokenizer("eng").sent_tokenize(text)
    def span_tokenize(self, text):
        from datatrove.utils.word_tokenizers import load_word_tokenizer
        return load_word_tokenizer("eng").span_tokenize(text)

inputs, out, logs, workers, tasks, words = sys.argv[1:7]
lang = SplitWords("eng") if words == "split" else "eng"
filters = [GopherQualityFilter(language=lang), GopherRepetitionFilter(language=lang),
           C4QualityFilter(filter_curly_bracket=False, language=lang)]
settings = [{"type": type(f).__name__, **{k: (v if isinstance(v, (int, float, str, bool, type(None), tuple, list)) else type(v).__name__)
             for k, v in vars(f).items() if not k.startswith("_") and k not in ("stats", "exclusion_writer", "stop_words")}} for f in filters]
pipe = [JsonlReader(inputs), *filters, JsonlWriter(out, compression=None)]
t0 = time.perf_counter()
LocalPipelineExecutor(pipe, tasks=int(tasks), workers=int(workers), logging_dir=logs).run()
wall = time.perf_counter() - t0
import datatrove
from importlib.metadata import version
print(json.dumps({"wall": wall, "settings": settings, "versions": {"datatrove": version("datatrove"), "spacy": version("spacy")}}))
"""


def _kept_ids(out: Path) -> set[str]:
    ids: set[str] = set()
    for p in sorted(out.rglob("*.jsonl*")):
        if p.suffix in (".jsonl", ".zst", ".gz"):
            if p.suffix == ".jsonl":
                with open(p, encoding="utf-8") as f:
                    ids.update(json.loads(line)["id"] for line in f if line.strip())
            else:
                from ilm.data.io import read_all

                ids.update(d.id for d in read_all(p))
    return ids


def _tree_cpu(root: int, seen: dict[int, float]) -> None:
    """Record the CPU seconds (user + system) so far of `root` and each descendant, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    stats: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(d)] = int(fields[1])
            stats[int(d)] = (int(fields[11]) + int(fields[12])) / tick
    for pid, cpu in stats.items():
        p = pid
        while p in parent and p != root:
            p = parent[p]
        if p == root:
            seen[pid] = max(seen.get(pid, 0.0), cpu)


def _child(cmd: list[str], env: dict[str, str]) -> tuple[dict, float]:
    """Run one side; (its JSON line, CPU seconds of it and its workers, sampled from /proc every 0.1 s:
    the workers' processes are not all reaped by our child, so its rusage would miss them)."""
    import threading

    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, float] = {}

    def sample() -> None:
        while proc.poll() is None:
            _tree_cpu(proc.pid, seen)
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2][:40]!r}... failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]), sum(seen.values())


def normalize_speed(rounds: int = 5) -> dict:
    """`normalise_text` against its earlier implementation (the reference of its property test) on the
    demo texts, CPU time, interleaved; both outputs must be identical."""
    from ilm.data.corpus import demo_documents
    from ilm.data.normalize import normalise_text
    from tests.data.test_gopher_rules import _normalise_before

    texts = [d.text for d in demo_documents(n_real=1100)[0]] * 10
    if any(normalise_text(x) != _normalise_before(x) for x in texts):
        raise AssertionError("normalise_text differs from its earlier implementation")
    times: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(rounds):
        for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
            f = _normalise_before if name == "before" else normalise_text
            t0 = time.process_time()
            for x in texts:
                f(x)
            times[name].append(time.process_time() - t0)
    ratios = sorted(a / b for a, b in zip(times["after"], times["before"]))
    mb = sum(len(x.encode("utf-8")) for x in texts) / 1e6
    print(f"normalise_text: {mb:.1f} MB, {statistics.median(times['before']):.3f} s before, "
          f"{statistics.median(times['after']):.3f} s after (CPU, median of {rounds}); after/before "
          f"{statistics.median(ratios):.2f} (range {ratios[0]:.2f}-{ratios[-1]:.2f}); outputs identical")
    return {"mb": round(mb, 2), "after_over_before": round(statistics.median(ratios), 2),
            "range": [round(ratios[0], 2), round(ratios[-1], 2)]}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(len(a | b), 1)


def main() -> dict:
    import shutil

    target_mb = float(os.environ.get("ILM_BENCH_PIPELINE_MB", "24"))
    rounds = int(os.environ.get("ILM_BENCH_PIPELINE_ROUNDS", "3"))
    ilm_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    dt_env = {**os.environ, "PYTHONPATH": str(DATATROVE), "LOGURU_LEVEL": "WARNING"}
    have_dt = (DATATROVE / "datatrove").is_dir()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "in").mkdir()
        n_docs, n_bytes = make_corpus(t / "in", target_mb)
        mb = n_bytes / 1e6
        (t / "tiny").mkdir()
        _tiny_corpus(t / "tiny")
        recipe = t / "filters.toml"
        recipe.write_text("".join(f'[[steps]]\ntype = "{s}"\n\n' for s in ILM_STEPS))
        sides: dict[str, list[str]] = {
            "ilm": [sys.executable, "-c", _ILM_CHILD, str(recipe), str(t / "in"), "{out}", str(WORKERS)],
        }
        if have_dt:
            for name, words in (("datatrove", "spacy"), ("datatrove (str.split words)", "split")):
                sides[name] = [sys.executable, "-c", _DT_CHILD, str(t / "in"), "{out}", "{logs}", str(WORKERS),
                               str(SHARDS), words]
        sides["ilm full default pipeline"] = [sys.executable, "-c", _ILM_CHILD, str(REPO / "recipes/data/internlm2.toml"),
                                              str(t / "in"), "{out}", str(WORKERS)]
        print(f"{n_docs:,} documents, {mb:.1f} MB of text in {SHARDS} jsonl shards; {WORKERS} workers per side; "
              f"{rounds} rounds, order flipped each round; load average before {load_before[0]:.1f}", flush=True)
        if not have_dt:
            print(f"  datatrove skipped: no datatrove at {DATATROVE}; install it with `pip install --target {DATATROVE} "
                  f"datatrove=={DATATROVE_VERSION} spacy==3.8.18 orjson==3.13.0` (`make bench` does)")
        fixed: dict[str, tuple[float, float]] = {}
        for name, argv in sides.items():  # each once on a near-empty input: start-up, imports, tokenizer/model loading
            out, logs = t / "out", t / "logs"
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)
            cmd = [{"{out}": str(out), "{logs}": str(logs), str(t / "in"): str(t / "tiny")}.get(a, a) for a in argv]
            r0, c0 = _child(cmd, dt_env if name.startswith("datatrove") else ilm_env)
            fixed[name] = (r0["wall"], c0)
            print(f"  fixed cost, {name}: {r0['wall']:.1f} s wall, {c0:.1f} CPU s", flush=True)
        walls: dict[str, list[float]] = {k: [] for k in sides}
        cpus: dict[str, list[float]] = {k: [] for k in sides}
        kept: dict[str, set[str]] = {}
        info: dict[str, dict] = {}
        for r in range(rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in order:
                out, logs = t / "out", t / "logs"
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(logs, ignore_errors=True)
                cmd = [{"{out}": str(out), "{logs}": str(logs)}.get(a, a) for a in sides[name]]
                res, cpu = _child(cmd, dt_env if name.startswith("datatrove") else ilm_env)
                walls[name].append(res["wall"])
                cpus[name].append(cpu)
                ids = _kept_ids(out / "kept" if name.startswith("ilm") else out)
                if name in kept and kept[name] != ids:
                    raise AssertionError(f"{name} kept other documents in round {r + 1}")
                kept[name], info[name] = ids, res
                print(f"  round {r + 1}: {name}: {res['wall']:.1f} s wall, {mb / res['wall'] / WORKERS:.3f} MB/s per core, "
                      f"{cpu:.1f} CPU s, kept {len(ids):,}", flush=True)
    load_after = os.getloadavg()
    res: dict = {"fixed_cost": {k: {"wall_s": round(w, 1), "cpu_s": round(c, 1)} for k, (w, c) in fixed.items()},"documents": n_docs, "input_mb": round(mb, 2), "workers": WORKERS, "rounds": rounds,
                 "load_average_before": [round(x, 1) for x in load_before],
                 "load_average_after": [round(x, 1) for x in load_after], "sides": {}}
    print(f"\nsettings (load average after {load_after[0]:.1f}):")
    for name in sides:
        per_core = sorted(mb / w / WORKERS for w in walls[name])
        per_cpu = statistics.median(mb / c for c in cpus[name])
        res["sides"][name] = {"mb_per_s_per_core": round(statistics.median(per_core), 3),
                              "range": [round(per_core[0], 3), round(per_core[-1], 3)],
                              "mb_per_cpu_s": round(per_cpu, 3), "kept_docs": len(kept[name]),
                              "settings": info[name]["settings"], **({"versions": info[name]["versions"]} if "versions" in info[name] else {})}
        print(f"  {name}: {json.dumps(info[name]['settings'], default=str)}")
        if "versions" in info[name]:
            print(f"    versions: {info[name]['versions']}")
    print(f"\n{'side':30s} {'MB/s per core: median (range)':>30s} {'MB per CPU s':>13s} {'kept':>7s} {'fixed cost: wall, CPU':>22s}")
    for name, s in res["sides"].items():
        print(f"{name:30s} {s['mb_per_s_per_core']:>14.3f} ({s['range'][0]:.3f}-{s['range'][1]:.3f}) {s['mb_per_cpu_s']:>13.3f} "
              f"{s['kept_docs']:>7,} {fixed[name][0]:>13.1f} s, {fixed[name][1]:.1f} s")
    if have_dt:
        for dt in ("datatrove", "datatrove (str.split words)"):
            ratios = sorted(d / i for i, d in zip(walls["ilm"], walls[dt]))  # wall(dt) / wall(ilm), per round
            cpu_ratios = sorted(d / i for i, d in zip(cpus["ilm"], cpus[dt]))
            res[f"ilm_vs_{dt}"] = {"median": round(statistics.median(ratios), 2), "range": [round(ratios[0], 2), round(ratios[-1], 2)],
                                   "cpu_median": round(statistics.median(cpu_ratios), 2),
                                   "cpu_range": [round(cpu_ratios[0], 2), round(cpu_ratios[-1], 2)],
                                   "jaccard_kept": round(_jaccard(kept["ilm"], kept[dt]), 3)}
            print(f"ilm / {dt}: wall {statistics.median(ratios):.2f}x (range {ratios[0]:.2f}-{ratios[-1]:.2f}), CPU time "
                  f"{statistics.median(cpu_ratios):.2f}x ({cpu_ratios[0]:.2f}-{cpu_ratios[-1]:.2f}) over {rounds} rounds; "
                  f"kept-set Jaccard {_jaccard(kept['ilm'], kept[dt]):.3f}")
        res["jaccard_datatrove_spacy_vs_split"] = round(_jaccard(kept["datatrove"], kept["datatrove (str.split words)"]), 3)
        print(f"datatrove spaCy words vs str.split words: kept-set Jaccard {res['jaccard_datatrove_spacy_vs_split']:.3f}")
    res["normalize"] = normalize_speed()
    return res


if __name__ == "__main__":
    main()
