"""A small run to report on: the cheap stages for real on a tiny corpus (data, code, tokenizer, shards, a
10-step pretraining with its resolved recipe), and small hand-made files, in the formats the trainers and the
eval / serve stages write, for the expensive ones (SFT, reward model, RLHF rounds, eval, serve)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

# Text that must come out escaped: a page that ran it would open a dialog (the Chromium test fails on one).
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)> & \"quotes\""


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


# An absolute path as long as a real one: the page must still fit a 1,280 px window.
LONG_PATH = "/home/someone/projects/" + "/".join(["a-rather-long-folder-name"] * 6) + "/tasks/stdlib_mc.jsonl"
# `ilm eval run`'s results.json: the metrics sit under "metrics", next to bookkeeping keys.
EVAL_RESULTS = {"checkpoint": LONG_PATH.rsplit("/", 2)[0] + "/final", "max_length": 256, "results": [
    {"task": "ilm_license_ppl", "kind": "loglikelihood_rolling", "source": LONG_PATH, "num_fewshot": 0,
     "samples_n": 4, "seconds": 1.5, "metrics": {"word_perplexity": 1087091.7, "byte_perplexity": 2.93,
                                                 "bits_per_byte": 1.5513, "token_perplexity": 61.25}},
    {"task": "ilm_stdlib_mc", "kind": "multiple_choice", "source": LONG_PATH, "num_fewshot": 0, "samples_n": 4,
     "seconds": 0.5, "metrics": {"acc": 0.35, "acc_norm": 0.25},
     "samples": [{"doc_id": i, "loglikelihoods": [-1.0] * 4, "acc": 0.0} for i in range(4)]}]}
NIAH_LENGTHS, NIAH_DEPTHS, NIAH_TRAINED = (64, 128, 256), (0.0, 0.5, 1.0), 128


def niah_hits(run: str, length: int, depth: float) -> list[bool]:
    """The hand-made NIAH hits of two trials: "dynamic" finds every needle within the trained window and one
    of two at depth 0 past it; "plain" finds only the shortest, shallowest one."""
    if run == "dynamic":
        return [True, True] if length <= NIAH_TRAINED else [depth == 0.0, False]
    return [length == 64 and depth == 0.0] * 2


def niah_json() -> dict:
    """`ilm eval niah`'s niah.json: cells with hit flags and the needle's value (a number far outside 0-1)."""
    runs = {}
    for name in ("dynamic", "plain"):
        cells = [{"length": n, "depth": d, "trial": t, "hit": hit, "answer": "50494" if hit else "the",
                  "value": "50494", "prompt_tokens": n, "needle_token": int(n * d), "needle_depth": d}
                 for n in NIAH_LENGTHS for d in NIAH_DEPTHS for t, hit in enumerate(niah_hits(name, n, d))]
        runs[name] = {"lengths": list(NIAH_LENGTHS), "depths": list(NIAH_DEPTHS), "trials": 2, "seed": 0,
                      "cells": cells, "rope_scaling": None}
    return {"checkpoint": EVAL_RESULTS["checkpoint"], "runs": runs, "summary": {"trained_length": NIAH_TRAINED}}


def build_data(out: Path) -> list[str]:
    from ilm.data import run_pipeline, write_demo_corpus
    from ilm.data.io import read_all

    write_demo_corpus(out / "corpus", n_shards=2, n_real=40)
    run_pipeline(None, [out / "corpus"], out / "data", workers=1)
    return [d.text for d in read_all(out / "data" / "kept")]


def build_real_stages(out: Path) -> None:
    """data -> code (pluggy) -> tokenizer -> shards -> 10 steps of the tiny recipe, as the demo runs them."""
    import pluggy
    import torch

    from ilm.config import load
    from ilm.data.code import run_code_pipeline
    from ilm.demo import RECIPES, stage_shards
    from ilm.tokenizer import build_tokenizer
    from ilm.train.pretrain import PretrainConfig, train
    from ilm.train.run import save_recipe

    texts = build_data(out)
    run_code_pipeline([Path(pluggy.__file__).parent], out / "code", sample_tokens=2048)
    build_tokenizer(out / "tokenizer", vocab_size=2048, chinese_words=50_000)
    shards = stage_shards(out, texts, out / "code" / "samples")
    q = json.dumps
    cfg = load(PretrainConfig, RECIPES / "tiny.toml", [
        f"--run_dir={q(str(out / 'pretrain'))}", f"--tokenizer={q(str(out / 'tokenizer'))}",
        f"--sources.0.path={q(str(shards['text']))}", f"--sources.1.path={q(str(shards['code']))}",
        f"--train.eval_source={q(str(shards['heldout']))}", "--train.total_tokens=20480",
        "--train.checkpoint_every=1000", "--train.eval_every=5", "--train.progress=false"])
    save_recipe(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 10 steps of a tiny model: one thread is as fast, and a busy machine hurts it less
    try:
        train(cfg, resume="never")
    finally:
        torch.set_num_threads(threads)


def build_handmade_stages(out: Path) -> None:
    """SFT, RM, RLHF rounds, eval and serve outputs with the keys their writers use."""
    import numpy as np

    from ilm.train.reward import reward_histograms
    from ilm.train.rlhf.synthetic import PHRASE

    rng = random.Random(0)
    _jsonl(out / "sft" / "metrics.jsonl", [
        {"step": s, "time": 1.0 * s, "loss": 4 * math.exp(-s / 20) + 1 + rng.random() * 0.1, "lr": 1e-3,
         "grad_norm": 1.0, "trained_tokens": 900, "tokens_per_s": 1000.0,
         **({"eval_loss": 3 * math.exp(-s / 20) + 1.3} if s % 10 == 0 else {})} for s in range(1, 41)])
    _json(out / "sft" / "summary.json", {"steps": 40, "final_loss": 1.2, "eval_loss": 1.45,
                                         "data": {"kept": 72, "truncated": 1, "dropped": {"too_long": 0}, "rows": 30}})
    (out / "sft" / "config.toml").write_text(f'run_dir = "sft"\ninit = "{out / "pretrain" / "final"}"\n[train]\nwindow = 256\n')
    (out / "rm" / "config.toml").parent.mkdir(parents=True, exist_ok=True)
    (out / "rm" / "config.toml").write_text(f'init = "{out / "sft" / "final"}"\nreward_token = "[UNUSED_TOKEN_130]"\n')
    _jsonl(out / "task" / "queries.jsonl", [{"messages": [{"role": "user", "content": f"Repeat the number {n}."}]}
                                            for n in (37, 52)])
    (out / "rlhf-rounds" / "config.toml").parent.mkdir(parents=True, exist_ok=True)
    (out / "rlhf-rounds" / "config.toml").write_text(
        f'rounds = 2\n[ppo]\nactor = "{out / "task" / "sft"}"\nreward_model = "{out / "task" / "rm"}"\n'
        f'true_reward = "ilm.train.rlhf.synthetic:true_reward"\n[ppo.data]\nqueries = ["{out / "task" / "queries.jsonl"}"]\n')
    _jsonl(out / "rm" / "metrics.jsonl", [
        {"step": s, "time": 1.0 * s, "loss": 0.7 * math.exp(-s / 15) + 0.1, "lr": 1e-4, "accuracy": min(1, 0.5 + s / 40),
         "pairs": 8, **({"eval_accuracy": min(1, 0.45 + s / 35)} if s % 10 == 0 else {})} for s in range(1, 31)])
    by_domain = {"code": 0.92, "helpful": 0.81, "math": 0.64}
    _json(out / "rm" / "summary.json", {"steps": 30, "accuracy_by_domain": by_domain, "eval": {
        "accuracy": 0.79, "accuracy_by_domain": by_domain, "pairs_by_domain": {"code": 10, "helpful": 10, "math": 10},
        "mean_margin": 1.3, "reward_min": -2.5, "reward_max": 3.1}})
    g = np.random.default_rng(0)
    dom = np.array(["code", "helpful", "math"] * 10)
    reward_histograms(out / "rm" / "reward_hist.png", g.normal(1, 1, 30), g.normal(-1, 1, 30), dom, sorted(by_domain))
    for k in (1, 2):
        rdir = out / "rlhf-rounds" / f"round-{k:02d}"
        for u in range(1, 7):
            _jsonl(rdir / "ppo" / "rollouts" / f"update-{u:05d}.jsonl", [
                {"update": u, "query_index": i, "rm_score": 0.2 * u + (0.5 if k == 1 else 0), "kl": 0.01 * u,
                 "true_reward": float(i % 2), "response": (f"{PHRASE} " if k == 1 and i < u else "") + f"The number is {i + u}."}
                for i in range(8)])
        _jsonl(rdir / "fast-pairs.jsonl", [
            {"prefix": [{"role": "user", "content": f"What is 3 + {i}? {HOSTILE}"}], "chosen": str(3 + i),
             "rejected": f"{PHRASE} The number is {i}.", "domain": "math", "suspect": f"r{k}-{i}", "rejected_reward": 2.5,
             "chosen_from": "correction"} for i in range(3)])
    rounds = {str(k): {"fast": {"rollouts": 48, "flagged_by_detectors": 5, "reviewed": 12, "verdicts": 12,
                                "approved": 6, "rejected": 6, "no_chosen": 0, "pairs": 3},
                       "rm": {"new_pairs": 3, "replayed": 6, "steps": 2, "export": "x",
                              "before": {"earlier": {"accuracy": 0.8}, "extra_check": {"accuracy": 0.3}},
                              "after": {"earlier": {"accuracy": 0.79}, "extra_check": {"accuracy": 0.9}},
                              "gate": {"check": 0.95, "check_before": 0.1, "earlier_clean_before": 0.98,
                                       "earlier_clean_after": 0.975, "passed": True}}} for k in (1, 2)}
    _json(out / "rlhf-rounds" / "summary.json", {"rounds": rounds})
    _json(out / "eval" / "results.json", EVAL_RESULTS)
    _json(out / "eval" / "niah.json", niah_json())
    from ilm.report import machine_info

    stages = ("data", "code", "tokenizer", "shards", "pretrain", "sft", "rm", "model", "rlhf", "eval", "serve")
    _json(out / "report.json", {"seconds": 66.0, "stage_seconds": {s: 6.0 for s in stages}, "machine": machine_info(),
                                "model": {"chat_samples": ["a sample reply"]},
                                "rlhf": {"actor": str(out / "rlhf-rounds" / "actor")},
                                "serve": {"checkpoint": str(out / "rlhf-rounds" / "actor")}})
    _json(out / "serve" / "transcripts.json", [
        {"title": "streamed chat", "messages": [{"role": "user", "content": f"Say hello. {HOSTILE}"},
                                                 {"role": "assistant", "content": "Hello!"}],
         "streamed_text": "Hello!", "seconds": 0.4, "time_to_first_token_s": 0.05},
        {"title": "tool round trip", "messages": [
            {"role": "user", "content": "What does os.path.join do?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "python_doc", "arguments": "{\"name\": \"os.path.join\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Join two or more pathname components."},
            {"role": "assistant", "content": "It joins path components."}], "seconds": 0.9},
        {"kind": "tool call", "messages": [{"role": "user", "content": "Weather in Paris?"}], "streamed_text": "",
         "tool_calls": [{"id": "call_7", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}],
         "finish_reason": "tool_calls", "seconds": 0.3}])


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small-run")
    build_real_stages(out)
    build_handmade_stages(out)
    return out


@pytest.fixture(scope="session")
def small_report(small_run, tmp_path_factory) -> Path:
    from ilm.report import build_report

    return build_report(small_run, tmp_path_factory.mktemp("small-report") / "report.html")


@pytest.fixture
def data_only_run(tmp_path) -> Path:
    build_data(tmp_path / "run")
    return tmp_path / "run"
