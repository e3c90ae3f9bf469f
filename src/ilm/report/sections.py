"""One function per section of the report. Each reads what its stage left in the run directory and returns
the section's HTML, or a "not run" section when the stage left nothing (the RLHF section: `ilm.report.rlhf`;
the evaluation and chats sections: `ilm.report.outcomes`; the run directory and the section list:
`ilm.report.run`).

Files read (all optional; a missing one means the stage did not run):

  report.json                  the demo's summary: stage_seconds, each stage's key numbers, "machine"
  data/ledger.json, data/removed/      the text pipeline's funnel, dedup figures, removed documents
  code/ledger.json, code/samples/      the code pipeline, tiers, dependency-ordered repository samples
  tokenizer/                   the run's tokenizer (compared with cl100k on small real samples)
  pretrain/, sft/, rm/         metrics.jsonl, summary.json, config.toml; rm/reward_hist.png
  rlhf-rounds/                 summary.json or state.json, round-kk/ppo/rollouts/*.jsonl, round-kk/fast-pairs.jsonl
  eval/results.json            tasks and their metrics: {"task": {"metric": value}}, [{"task": .., ..}] or
                               {"results": either of those}
  eval/niah.json               NIAH cells: {"lengths": [..], "depths": [..], "scores": [[..]]} or records
                               with length/depth/score keys (one grid per value of any other key, e.g. ntk),
                               alone, in a list, or under "results"/"cells"/"grid"; eval/niah.png otherwise
  serve/transcripts.json       exchanges: {"messages": [...], "streamed_text": .., timings}
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ilm.report import figures
from ilm.report.html import Safe, details, esc, figure, join, kv, not_run, num, p, pre, section, table, tag
from ilm.report.outcomes import chats, evaluation
from ilm.report.rlhf import rlhf
from ilm.report.run import STAGES, Run, _model_line

# ----------------------------------------------------------------------------- overview


def ran(run: Run) -> dict[str, bool]:
    """Which stages left their outputs."""
    r = run.path
    return {
        "data": (r / "data" / "ledger.json").is_file(),
        "code": (r / "code" / "ledger.json").is_file(),
        "tokenizer": (r / "tokenizer" / "tokenizer.json").is_file(),
        "shards": (r / "tokens").is_dir(),
        "pretrain": (r / "pretrain" / "metrics.jsonl").is_file(),
        "sft": (r / "sft" / "metrics.jsonl").is_file(),
        "rm": (r / "rm" / "metrics.jsonl").is_file(),
        "model": "model" in run.report,
        "rlhf": any((r / "rlhf-rounds").glob("round-*/ppo/rollouts/update-*.jsonl"))
        or any((r / "rlhf").glob("rollouts/update-*.jsonl")),
        "eval": (r / "eval" / "results.json").is_file() or (r / "eval" / "niah.json").is_file(),
        "serve": (r / "serve" / "transcripts.json").is_file(),
    }


def overview(run: Run, status: dict[str, bool], machine_now: Callable[[], dict]) -> Safe:
    """Every stage with its status and wall time, the total, and the machine the run recorded."""
    order = ["data", "code", "tokenizer", "shards", "pretrain", "sft", "rm", "model", "rlhf", "eval", "serve"]
    order += [s for s in (run.report.get("stage_seconds") or {}) if s not in order]
    total = run.report.get("seconds")
    rows = []
    for s in order:
        secs = run.seconds(s)
        share = f"{secs / total:.0%}" if secs is not None and isinstance(total, (int, float)) and total > 0 else "—"
        rows.append([s, "ran" if status.get(s) or secs is not None else "not run",
                     f"{secs:.1f}" if secs is not None else "—", share])
    body = [table(["stage", "status", "seconds", "share of the run"], rows)]
    if isinstance(total, (int, float)):
        body.append(p(f"Total wall time: {total:.1f} s ({total / 60:.1f} min)."))
    machine = run.report.get("machine")
    if isinstance(machine, dict):
        body += [tag("h3", "Machine (as recorded by the run)"), _machine(machine)]
    else:
        body += [tag("h3", "Machine"),
                 p("The run did not record its machine (report.json has no \"machine\"); this is the machine "
                   "that built the report:", class_="note"), _machine(machine_now())]
    return section("overview", "Run overview: stages, times, machine", join(body))


def _machine(info: dict[str, Any]) -> Safe:
    labels = {"usable_cores": "usable cores", "ram_gib": "RAM (GiB)", "cpu": "CPU"}
    return kv((labels.get(k, k), v) for k, v in info.items())


# ----------------------------------------------------------------------------- data


def _funnel_table(steps: list[dict[str, Any]]) -> Safe:
    rows = []
    for s in steps:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.get("reasons", {}).items(), key=lambda item: -item[1]))
        rows.append([s["step"], s["docs_in"], s["removed_docs"], s.get("removed_bytes", 0), reasons or "—"])
    return table(["step", "documents in", "removed", "bytes removed", "removal reasons"], rows)


def _documents(path: Path, cap: int) -> list[Any]:
    """The first `cap` documents of a pipeline output folder (a real run's folders are far too big to read)."""
    from ilm.data.io import list_inputs, read_documents

    out: list[Any] = []
    try:
        for f in list_inputs([path]):
            for d in read_documents(f):
                out.append(d)
                if len(out) >= cap:
                    return out
    except Exception:  # noqa: BLE001 - examples are a courtesy; the tables stand without them
        return out
    return out


def _removed_examples(path: Path, limit: int = 160) -> Safe:
    """One removed document per reason, its first characters, so a reader sees what a reason means."""
    docs = _documents(path, cap=5000) if path.is_dir() else []
    seen: dict[str, list[Any]] = {}
    for d in docs:
        why = (d.metadata.get("removed") or {})
        key = f"{why.get('step', '?')}: {why.get('reason', '?')}"
        if key not in seen:
            text = " ".join(d.text.split())
            seen[key] = [key, d.id, text[:limit] + ("…" if len(text) > limit else "")]
    if not seen:
        return Safe("")
    return details(f"One removed document per reason ({len(seen)} reasons)",
                   table(["step: reason", "document", "beginning of its text"], list(seen.values())))


def _dedup(glob: dict[str, Any]) -> Safe:
    if not glob:
        return Safe("")
    keys = sorted({k for v in glob.values() for k in v})  # one row per figure: the steps' keys differ
    return join([tag("h3", "Deduplication"),
                 table(["", *glob], [[k.replace("_", " "), *(v.get(k, "—") for v in glob.values())] for k in keys])])


def data(run: Run) -> Safe:
    ledger = run.json("data/ledger.json")
    if not ledger:
        return not_run("data", STAGES[0][2], "no data/ledger.json")
    steps = ledger.get("funnel", [])
    body = [kv([("documents in", ledger.get("input_docs")), ("kept", ledger.get("kept_docs")),
                ("removed", ledger.get("removed_docs")), ("bytes in", ledger.get("input_bytes")),
                ("bytes kept", ledger.get("kept_bytes")), ("ledger balanced", ledger.get("balanced"))])]
    if steps:
        body += [figure(figures.funnel(steps, "Text pipeline: documents through each step"),
                        "Blue: documents that passed the step; orange: removed by it (count on the right)."),
                 _funnel_table(steps)]
    body += [_removed_examples(run.path / "data" / "removed"), _dedup(ledger.get("global", {}))]
    return section("data", STAGES[0][2], join(body))


# ----------------------------------------------------------------------------- code


def _sample_files(text: str) -> list[str]:
    return [line[3:] for line in text.splitlines() if line.startswith("## ")]


def code(run: Run) -> Safe:
    ledger = run.json("code/ledger.json")
    if not ledger:
        return not_run("code", STAGES[1][2], "no code/ledger.json")
    c = ledger.get("code", {})
    ingest, samples = c.get("ingest", {}), c.get("samples", {})
    body = [kv([("repositories", ingest.get("repos")), ("files", ingest.get("files")),
                ("skipped at input", ", ".join(f"{k} {v}" for k, v in ingest.get("skipped_at_input", {}).items())
                 or "—"), ("kept files", ledger.get("kept_docs")), ("removed files", ledger.get("removed_docs")),
                ("repository samples", samples.get("samples")), ("sample format", samples.get("format")),
                ("token budget per sample", samples.get("budget_tokens"))])]
    tiers = samples.get("tiers", {})
    kept = c.get("kept_tiers", {})
    if tiers or kept:
        names = [t for t in ("high", "medium", "low") if t in tiers or t in kept]
        names += sorted((set(tiers) | set(kept)) - set(names))
        body += [tag("h3", "Quality tiers"),
                 table(["tier", "kept files", "samples", "tokens", "epochs", "epoch-weighted tokens"],
                       [[t, kept.get(t, 0), tiers.get(t, {}).get("samples", 0), tiers.get(t, {}).get("tokens", 0),
                         tiers.get(t, {}).get("epochs", "—"), tiers.get(t, {}).get("epoch_tokens", 0)]
                        for t in names])]
    if ledger.get("funnel"):
        body += [tag("h3", "Code funnel"), _funnel_table(ledger["funnel"])]
    body.append(_dedup(ledger.get("global", {})))
    body.append(_code_sample(run.path / "code" / "samples"))
    return section("code", STAGES[1][2], join(body))


def _code_sample(path: Path) -> Safe:
    """The first repository's first sample: its files in dependency order and its beginning."""
    docs = _documents(path, cap=200) if path.is_dir() else []
    if not docs:
        return Safe("")
    # the sample with the most whole files (none cut into parts) shows the order best
    whole = [d for d in docs if not any("(part " in f for f in _sample_files(d.text))] or docs
    d = max(whole, key=lambda d: len(_sample_files(d.text)))
    files = _sample_files(d.text)
    return join([tag("h3", f"A dependency-ordered sample: {d.id}"),
                 p(f"{len(files)} files, in the order they appear (a file comes after the files it imports):"),
                 tag("ol", join(tag("li", tag("code", f)) for f in files[:60]), class_="files"),
                 details("The sample's text (beginning)", pre(d.text, 5000))])


# ----------------------------------------------------------------------------- tokenizer


def compression_samples() -> dict[str, str]:
    """Small real samples per language: Python's documentation (English), the built-in corpus's Chinese,
    French and German paragraphs, and Python source from the standard library (code)."""
    import textwrap

    from ilm.data.corpus import OTHER_LANG, ZH_TEXTS, real_texts

    english = "\n\n".join(real_texts(max_docs=30))[:30_000]
    code_text = Path(textwrap.__file__).read_text("utf-8")[:30_000]
    return {"English": english, "Chinese": "\n".join(ZH_TEXTS), "French": OTHER_LANG[0],
            "German": OTHER_LANG[1], "Python code": code_text}


def tokenizer(run: Run) -> Safe:
    tok_dir = run.path / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        return not_run("tokenizer", STAGES[2][2], "no tokenizer/tokenizer.json")
    from ilm.tokenizer import load_tokenizer
    from ilm.tokenizer.base import cl100k_reference

    tok = load_tokenizer(tok_dir)
    ref = cl100k_reference()
    rows, ours, theirs, names = [], [], [], []
    for lang, text in compression_samples().items():
        n_bytes = len(text.encode("utf-8"))
        a, b = len(tok.encode(text)), len(ref.encode_ordinary(text))
        rows.append([lang, len(text), n_bytes, a, b, round(n_bytes / a, 2), round(n_bytes / b, 2), round(a / b, 2)])
        names.append(lang)
        ours.append(n_bytes / a)
        theirs.append(n_bytes / b)
    meta = run.json("tokenizer/ilm_tokenizer.json") or {}
    layout = meta.get("layout", {})
    body = [kv([("vocabulary", tok.vocab_size), ("from cl100k", layout.get("n_base")),
                ("Chinese tokens", layout.get("n_chinese")), ("spare", layout.get("n_spare")),
                ("stop ids", ", ".join(map(str, tok.stop_ids)))]),
            figure(figures.grouped_bars(names, {f"this run ({tok.vocab_size:,} tokens)": ours,
                                                "cl100k (100k tokens)": theirs},
                                        "Compression: UTF-8 bytes per token (higher is better)", "bytes / token"),
                   "Real samples: Python's documentation (English), the built-in corpus's Chinese, French and "
                   "German paragraphs, and textwrap.py from the standard library."),
            table(["sample", "characters", "bytes", "tokens (run)", "tokens (cl100k)", "bytes/token (run)",
                   "bytes/token (cl100k)", "tokens run / cl100k"], rows)]
    return section("tokenizer", STAGES[2][2], join(body))


# ----------------------------------------------------------------------------- training stages


def _summary_pairs(summary: dict[str, Any], keys: list[tuple[str, str]]) -> Safe:
    return kv([(label, summary.get(k)) for k, label in keys if summary.get(k) is not None])


def pretrain(run: Run) -> Safe:
    rows = run.jsonl("pretrain/metrics.jsonl")
    if not rows:
        return not_run("pretrain", STAGES[3][2], "no pretrain/metrics.jsonl")
    summary = {**(run.json("pretrain/summary.json") or {}), **run.stage("pretrain")}
    stages: list[list[Any]] = []  # stage, first and last logged step, last train loss, last held-out loss
    for r in rows:
        if r.get("stage") and (not stages or stages[-1][0] != r["stage"]):
            stages.append([r["stage"], r["step"], r["step"], "—", "—"])
        if stages:
            stages[-1][2] = r["step"]
            if isinstance(r.get("loss"), (int, float)):
                stages[-1][3] = round(r["loss"], 3)
            if isinstance(r.get("eval_loss"), (int, float)):
                stages[-1][4] = round(r["eval_loss"], 3)
    cfg = run.toml("pretrain/config.toml")
    model = cfg.get("model", {}) if isinstance(cfg.get("model"), dict) else {}
    over = ", ".join(f"{k}={v}" for k, v in (model.get("overrides") or {}).items())
    desc = f"preset {model.get('preset', '?')}" + (f" ({over})" if over else "") if model else None
    init = cfg.get("init")
    body = [_model_line(run, "Model trained", None, text=desc, note=f", from {run.short(init)}" if init else ", from scratch"),
            _summary_pairs(summary, [("steps", "steps"), ("final_loss", "final train loss (nats/token)"),
                                     ("eval_loss", "held-out loss (nats/token)"),
                                     ("unigram_entropy", "unigram entropy of the corpus (nats/token)")]),
            figure(figures.training_curves(rows, "Pretraining", [("loss", "loss", "eval_loss"),
                                                                  ("lr", "learning rate", None),
                                                                  ("tokens_per_s", "tokens/s", None)]),
                   "Dashed lines: a new stage starts (named at the top). Dots: held-out loss."),
            table(["stage", "first logged step", "last logged step", "train loss at its end",
                   "held-out loss at its end"], stages) if stages else ""]
    return section("pretrain", STAGES[3][2], join(body))


def sft(run: Run) -> Safe:
    rows = run.jsonl("sft/metrics.jsonl")
    if not rows:
        return not_run("sft", STAGES[4][2], "no sft/metrics.jsonl")
    summary = {**(run.json("sft/summary.json") or {}), **run.stage("sft")}
    d = summary.get("data") if isinstance(summary.get("data"), dict) else {}
    pairs = [("steps", summary.get("steps")), ("final train loss", summary.get("final_loss")),
             ("held-out assistant-token loss", summary.get("eval_loss"))]
    pairs += [(f"data: {k.replace('_', ' ')}", v if not isinstance(v, dict) else ", ".join(f"{a} {b}" for a, b in v.items())
               or "0") for k, v in d.items() if isinstance(v, (int, float, dict))]
    body = [_model_line(run, "Model fine-tuned", run.toml("sft/config.toml").get("init"),
                        " (its chat model: RUN/sft/final)"),
            kv([(k, v) for k, v in pairs if v is not None]),
            figure(figures.training_curves(rows, "SFT", [("loss", "loss (assistant tokens)", "eval_loss"),
                                                          ("lr", "learning rate", None)]),
                   "Loss on assistant tokens only; dots: held-out conversations.")]
    return section("sft", STAGES[4][2], join(body))


def rm(run: Run) -> Safe:
    rows = run.jsonl("rm/metrics.jsonl")
    if not rows:
        return not_run("rm", STAGES[5][2], "no rm/metrics.jsonl")
    summary = {**(run.json("rm/summary.json") or {}), **run.stage("rm")}
    ev = summary.get("eval") or {}
    by_dom = summary.get("accuracy_by_domain") or ev.get("accuracy_by_domain") or {}
    body = [_model_line(run, "Backbone", run.toml("rm/config.toml").get("init"), " (its LM head replaced by a reward head)"),
            kv([("steps", summary.get("steps")), ("held-out accuracy", ev.get("accuracy")),
                ("mean margin (chosen - rejected)", ev.get("mean_margin")),
                ("reward range", f"{num(ev.get('reward_min'))} .. {num(ev.get('reward_max'))}" if ev else None)])]
    if by_dom:
        doms = list(by_dom)
        body += [figure(figures.grouped_bars(doms, {"held-out accuracy": [by_dom[d] for d in doms]},
                                             "Reward model: held-out pair accuracy per domain", "accuracy",
                                             ylim=(0, 1.08), fmt="{:.0%}")),
                 table(["domain", "held-out pairs", "accuracy"],
                       [[d, (ev.get("pairs_by_domain") or {}).get(d, "—"), f"{by_dom[d]:.1%}"] for d in doms])]
    body.append(figure(figures.training_curves(rows, "Reward model training",
                                               [("loss", "loss", None), ("accuracy", "pair accuracy", "eval_accuracy")]),
                       "Batch pair accuracy while training; dots: held-out accuracy."))
    hist = run.file("rm/reward_hist.png")
    if hist:
        body.append(figure(figures.png_file(hist, "reward histograms"),
                           "Chosen vs rejected rewards on the held-out pairs, per domain (the trainer's figure: "
                           "the per-pair rewards are not kept in the run directory)."))
    return section("rm", STAGES[5][2], join(body))


# ----------------------------------------------------------------------------- recipes


def recipes(run: Run) -> Safe:
    """Every resolved recipe (config.toml) the run's stages wrote, three levels deep at most."""
    found = sorted({*run.path.glob("*/config.toml"), *run.path.glob("*/*/config.toml"),
                    *run.path.glob("*/*/*/config.toml")})
    title = "Resolved recipes"
    if not found:
        return section("recipes", title, p("No stage of this run wrote a resolved recipe (config.toml); the "
                                           "training commands write one beside metrics.jsonl.", class_="notrun"), status="not run")
    body = [p(f"{len(found)} config.toml files: each stage's recipe with its overrides applied and paths resolved.")]
    for f in found:
        rel = f.relative_to(run.path)
        body.append(details(str(rel), pre(f.read_text(errors="replace"), 20_000)))
    return section("recipes", title, join(body))


SECTION_BUILDERS: tuple[tuple[str, Callable[[Run], Safe]], ...] = (
    ("data", data), ("code", code), ("tokenizer", tokenizer), ("pretrain", pretrain), ("sft", sft), ("rm", rm),
    ("rlhf", rlhf), ("eval", evaluation), ("chats", chats), ("recipes", recipes),
)
__all__ = ["SECTION_BUILDERS", "STAGES", "Run", "esc", "overview", "ran"]
