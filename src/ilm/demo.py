"""`ilm demo`: the whole recipe, as far as it exists, on the built-in corpus, on CPU, in minutes.

Each stage is one function that takes the run directory (and what earlier stages produced), prints what it
did, and returns what later stages need:

  data       built-in corpus (real text that ships with Python + planted junk) -> the data pipeline
  code       installed repositories (pytest, pluggy) -> the code pipeline -> tiered repository samples
  tokenizer  the InternLM2 layout scaled down (cl100k top-K + Chinese + spare block)
  shards     kept documents -> token shards (train / held-out / code)
  pretrain   the tiny recipe's three stages (recipes/tiny.toml) -> an HF InternLM2 checkpoint
  sft        ChatML conversations built from real docstrings (tool use included) -> a chat checkpoint
  rm         the conditional reward model on preference pairs in three domains -> accuracy per domain
  model      round trip through both HF formats; batched generation with the KV cache
  rlhf       rounds of PPO on a task with a planted reward-model loophole: the fast path at work, and the
             reward and KL curves (recipes/rlhf-rounds-tiny.toml); the policy also learns a weather tool
             and needle retrieval (its own 2-layer task model, see below)
  eval       held-out perplexity and a shipped task (ilm eval) on the pretrained model; Needle in a
             Haystack (dynamic NTK vs plain RoPE) on the RLHF policy
  serve      the RLHF policy behind `ilm serve`: a streamed chat and a tool-call round trip through the
             official `openai` client, then 20 round trips checked against the tool's value

Two models: the pretrain -> SFT -> RM chain is the recipe's own (its tokenizer, data and stages), but in
minutes of CPU it learns no skill a person can check. The RLHF stage trains a separate 2-layer task model
from scratch (its own 512-token tokenizer) on skills that all come down to copying a value from the
context, which a tiny model learns in a minute or two: "Repeat the number N." (the task with a planted loophole,
where the true reward is known), the `get_weather` tool's temperature, and a needle in a haystack up to
its 256-token window. NIAH and the served model are that policy's, so they can show the skill working.

report.json is rewritten after every stage (a run that stops early still has one), and `ilm report` turns
the run directory into one HTML page, whose path the demo prints last.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    parser.add_argument("--quick", action="store_true", help="a few training steps only (tests, smoke runs)")
    parser.set_defaults(func=run)


def stage_data(out: Path) -> dict:
    from ilm.data import run_pipeline, write_demo_corpus
    from ilm.data.io import read_all

    _, plan = write_demo_corpus(out / "corpus", n_real=2000)
    ledger = run_pipeline(None, [out / "corpus"], out / "data", workers=2)
    print(f"[data] {ledger['input_docs']} documents in ({plan['real']} real, {plan['near_duplicates']} near-duplicates, "
          f"{plan['exact_duplicates']} exact copies, {plan['junk']} junk, {plan['malformed_lines']} malformed line) "
          f"-> {ledger['kept_docs']} kept, {ledger['removed_docs']} removed with reasons; balanced: {ledger['balanced']}")
    docs = read_all(out / "data" / "kept")
    return {"texts": [d.text for d in docs], "ledger": ledger}


def stage_code(out: Path) -> dict:
    """Real repositories installed on this machine (pytest, pluggy) through the code pipeline: markdown
    format, indentation-blind dedup, quality tiers, dependency-ordered repository samples."""
    import _pytest
    import pluggy

    from ilm.data.code import run_code_pipeline

    repos = [Path(_pytest.__file__).parent, Path(pluggy.__file__).parent]
    ledger = run_code_pipeline(repos, out / "code", sample_tokens=4096)
    code = ledger["code"]
    print(f"[code] {code['ingest']['files']} files from {code['ingest']['repos']} repositories -> "
          f"{ledger['kept_docs']} kept (tiers {code['kept_tiers']}), {ledger['removed_docs']} removed; "
          f"{code['samples']['samples']} dependency-ordered samples; balanced: {ledger['balanced']}")
    return {"samples": out / "code" / "samples", "ledger": ledger}


def stage_tokenizer(out: Path, texts: list[str]) -> dict:
    from ilm.tokenizer import build_tokenizer

    t0 = time.perf_counter()
    tok = build_tokenizer(out / "tokenizer", vocab_size=2048, chinese_words=50_000)
    sample = texts[0][:80]
    print(f"[tokenizer] InternLM2 layout at {tok.vocab_size} tokens in {time.perf_counter() - t0:.1f}s; "
          f"{sample!r} -> {len(tok.encode(sample))} tokens")
    return {"tokenizer": tok}


def stage_shards(out: Path, text: list[str], code_samples: Path) -> dict:
    """Kept text (90% train / 10% held out) and the code samples (their tier epochs travel along)."""
    from ilm.data.shards import tokenize_to_shards

    inputs = {"code": code_samples}
    for name, docs in (("text", [t for i, t in enumerate(text) if i % 10]), ("heldout", text[::10])):
        raw = out / "tokens-input" / f"{name}.jsonl"
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text("".join(json.dumps({"id": f"{name}-{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
        inputs[name] = raw
    paths = {}
    for name, src in inputs.items():
        report = tokenize_to_shards([src], out / "tokenizer", out / "tokens" / name, workers=1)
        paths[name] = out / "tokens" / name
        print(f"[shards] {name}: {report['documents']} documents, {report['tokens']:,} tokens")
    return paths


def stage_pretrain(out: Path, shards: dict, quick: bool) -> dict:
    from ilm.config import load
    from ilm.data.shards import TokenShards
    from ilm.train.pretrain import PretrainConfig, train, unigram_entropy

    overrides = [
        f"--run_dir={json.dumps(str(out / 'pretrain'))}", f"--tokenizer={json.dumps(str(out / 'tokenizer'))}",
        f"--sources.0.path={json.dumps(str(shards['text']))}", f"--sources.1.path={json.dumps(str(shards['code']))}",
        f"--train.eval_source={json.dumps(str(shards['heldout']))}",
    ]
    if quick:
        overrides += ["--train.total_tokens=40960", "--train.checkpoint_every=10", "--train.eval_every=10"]
    cfg = load(PretrainConfig, RECIPES / "tiny.toml", overrides)
    from ilm.train.run import save_recipe

    save_recipe(cfg)  # RUN_DIR/config.toml, as `ilm pretrain` writes it (ilm report shows it)
    summary = train(cfg, resume="never")
    entropy = unigram_entropy(TokenShards(shards["text"]))
    print(f"[pretrain] {summary['steps']} steps over 3 stages; held-out loss {summary['eval_loss']:.3f} nats/token "
          f"vs unigram entropy {entropy:.3f}; plot: {summary['plot']}; HF checkpoint: {summary.get('export')}")
    return {**summary, "unigram_entropy": entropy}


def stage_model(out: Path, checkpoint: Path, tokenizer) -> dict:
    """The chat model through both HF formats, then batched chat generation with the KV cache. The Llama
    copy carries the tokenizer (and the checkpoint's other files), as `ilm model convert` does, so
    AutoTokenizer and `ilm generate --prompt` work on it."""
    import tempfile

    from ilm.model.generate import Sampling, generate
    from ilm.model.hf import carried_files, load_checkpoint, save_checkpoint

    model = load_checkpoint(checkpoint).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    files.update(carried_files(checkpoint))
    llama = save_checkpoint(model, out / "checkpoint-llama", fmt="llama", extra_files=files)
    ids = torch.tensor([tokenizer.encode("def main():\n    return", bos=True)])
    with torch.no_grad():
        diff = (load_checkpoint(llama).eval()(ids) - model(ids)).abs().max().item()
    print(f"[model] exported Llama format to {llama}; reloaded logits max |diff| = {diff:.2e}")
    if diff > 1e-5:
        raise RuntimeError(f"the Llama round trip changed the logits by {diff}")
    questions = ["What does the function `os.path.join` do?", "What are the parameters of `json.dumps`?"]
    prompts = [tokenizer.render([{"role": "user", "content": q}], add_generation_prompt=True).ids for q in questions]
    outs = generate(model, prompts, Sampling(max_new_tokens=40, top_p=0.9, temperature=0.7, seed=0,
                                             stop_ids=tuple(tokenizer.stop_ids)))
    for q, o in zip(questions, outs):
        print(f"[model] chat sample: {q!r} -> {tokenizer.decode(o, skip_special=True)!r}")
    print(f"[model] (the chain's {sum(p.numel() for p in model.parameters()):,}-parameter chat model after minutes of CPU "
          "training: these samples show the checkpoint loads and generates through the KV cache, not what it knows)")
    return {"llama": str(llama), "parameters": sum(p.numel() for p in model.parameters()),
            "llama_logits_max_diff": diff, "chat_samples": [tokenizer.decode(o, skip_special=True) for o in outs]}


# The sections of report.json, in the order the demo runs them; README's "What `make demo` does" names the same
# ones (a test holds the two together). Each carries its key numbers and its wall time in seconds.
SECTIONS = ("data", "code", "tokenizer", "shards", "pretrain", "sft", "rm", "model", "rlhf", "eval", "serve")


def data_section(data: dict) -> dict:
    ledger = data["ledger"]
    return {"input_docs": ledger["input_docs"], "kept_docs": ledger["kept_docs"],
            "removed_docs": ledger["removed_docs"], "balanced": ledger["balanced"], "ledger": ledger}


def code_section(code: dict) -> dict:
    c = code["ledger"]
    return {"files": c["code"]["ingest"]["files"], "repos": c["code"]["ingest"]["repos"],
            "kept_docs": c["kept_docs"], "removed_docs": c["removed_docs"], "kept_tiers": c["code"]["kept_tiers"],
            "samples": c["code"]["samples"]["samples"], "balanced": c["balanced"]}


def shards_section(shards: dict) -> dict:
    from ilm.data.shards import TokenShards

    counts = {name: TokenShards(path) for name, path in shards.items()}
    return {name: {"documents": sh.num_docs, "tokens": sh.num_tokens, "path": str(shards[name])}
            for name, sh in counts.items()}


def stage_eval(out: Path, checkpoint: Path, policy: Path, quick: bool) -> dict:
    """`ilm eval` on the pretrained model (held-out perplexity, a shipped task); NIAH on the RLHF policy,
    asked in its chat template (the task model learned needle retrieval in its SFT data)."""
    from ilm.eval import demo as eval_demo
    from ilm.eval import needles

    return {**eval_demo.run(out, checkpoint, quick),
            "niah": needles.demo(out, policy, quick, chat=True, label="the RLHF policy (the served task model)")}


def stage_serve(out: Path, rlhf: dict, quick: bool) -> dict:
    """The RLHF model (`rlhf["actor"]`) behind the server: a task question streamed, then a weather tool-call
    round trip (the tool it learned in its SFT data; `tool_choice` auto, so the call is the model's own);
    then the tool-value check: 20 round trips whose tool answers a different temperature each time, on the
    policy and on its SFT start (`rlhf["actors"]["1"]`), against chance (1 in 90)."""
    from ilm.serve import demo as serve_demo
    from ilm.train.rlhf.synthetic import HIGH, LOW, WEATHER_TOOL, query, weather, weather_cases

    actor, start = Path(rlhf["actor"]), Path(rlhf["actors"]["1"])
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    summary = serve_demo.run(out, actor, quick, chat=query(42)["messages"], ask=ask, tool=WEATHER_TOOL,
                             tool_fn=weather, tool_choice="auto")
    cases = weather_cases()
    checks = {name: serve_demo.check_tool_values(path, cases, WEATHER_TOOL)
              for name, path in (("policy", actor), ("sft_start", start))}
    line = serve_demo.tool_value_line(checks["policy"], checks["sft_start"], chance=1 / (HIGH - LOW + 1))
    print(f"[serve] {line}")
    return {**summary, "checkpoint": str(actor), "tool_values": {**checks, "line": line}}


def write_report(out: Path, sections: dict[str, dict], seconds: dict[str, float], complete: bool = True) -> Path:
    """report.json: one section per stage (SECTIONS order) with its `seconds`, and the total wall time.
    `complete=False` writes the stages run so far (the others are absent: not run). The machine comes from
    `ilm.report.machine_info`."""
    missing = [s for s in SECTIONS if s not in sections or s not in seconds]
    if missing and complete:
        raise ValueError(f"report.json needs every stage; missing {missing}")
    from ilm.report import machine_info

    done = [s for s in SECTIONS if s not in missing]
    report: dict = {"seconds": round(sum(seconds[s] for s in done), 3),
                    "stage_seconds": {s: round(seconds[s], 3) for s in done}, "machine": machine_info()}
    for s in done:
        report[s] = {**sections[s], "seconds": round(seconds[s], 3)}
    path = out / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    sections: dict[str, dict] = {}

    def timed(name: str, fn, *a, section=lambda result: result):
        t0 = time.perf_counter()
        result = fn(*a)
        seconds[name] = time.perf_counter() - t0
        sections[name] = section(result)
        print(f"[{name}] stage done in {seconds[name]:.1f}s", flush=True)
        write_report(out, sections, seconds, complete=False)
        return result

    from ilm.train import reward, sft
    from ilm.train.rlhf import synthetic

    data = timed("data", stage_data, out, section=data_section)
    code = timed("code", stage_code, out, section=code_section)
    tok = timed("tokenizer", stage_tokenizer, out, data["texts"],
                section=lambda r: {"vocab_size": r["tokenizer"].vocab_size, "stop_ids": list(r["tokenizer"].stop_ids)})
    tok = tok["tokenizer"]
    shards = timed("shards", stage_shards, out, data["texts"], code["samples"], section=shards_section)
    pre = timed("pretrain", stage_pretrain, out, shards, args.quick)
    chat = timed("sft", sft.demo, out, pre["export"], out / "tokenizer", args.quick, 80 if args.quick else 1200,
                 [str(out / "code" / "kept")], [str(out / "data" / "kept")])
    timed("rm", reward.demo, out, chat["export"], out / "tokenizer", args.quick)
    timed("model", stage_model, out, Path(chat["export"]), tok)
    rlhf = timed("rlhf", synthetic.demo, out, args.quick)
    timed("eval", stage_eval, out, Path(pre["export"]), Path(rlhf["actor"]), args.quick)
    timed("serve", stage_serve, out, rlhf, args.quick)
    write_report(out, sections, seconds)
    print(f"\ndemo finished in {sum(seconds.values()):.1f}s (per stage: "
          + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
          + f"); outputs in {out}/ (report.json, pretrain/training.png, data/ledger.json, rm/ reward histograms, "
          "rlhf-rounds/curves.png, eval/niah.png, serve/transcripts.json)")
    from ilm.report import build_report

    print(f"report: {build_report(out)}")
    return 0
