"""Evaluation samples/s: `ilm eval` against lm-evaluation-harness (`--model hf`, the Python API) on the same
exported Llama checkpoint and the same shipped tasks.

The checkpoint: the `small` preset with random weights and a tokenizer trained on the tasks' own text
(vocab 1024), exported in Llama format with its tokenizer, fp32, on CPU (CUDA when present). Each side
loads the model once, outside the timing; a timed round covers building the task's prompts and scoring
them. Rounds alternate between the two; reported are the best of each and the median of the per-round
ratios (each ilm round against the lm-eval round right after it, so load that drifts hits both alike).
The numbers are also checked to agree (accuracy equal, perplexity within 1e-4 relative).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"
TASKS = {"ilm_stdlib_mc": None, "ilm_license_ppl": None, "ilm_stdlib_arith": 8}  # name -> limit (None: all)


def _checkpoint(d: Path) -> Path:
    import torch

    from ilm.eval.tasks import SHIPPED
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint
    from ilm.tokenizer import train_tokenizer

    corpus = d / "corpus.txt"
    lines = []
    for f in sorted(SHIPPED.parent.glob("*.jsonl")):
        for row in map(json.loads, f.read_text().splitlines()):
            lines += [str(v) for v in row.values() if isinstance(v, str)]
    corpus.write_text("\n".join(lines))
    tok = train_tokenizer([corpus], d / "tok", vocab_size=1024)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(get_preset("small", vocab_size=tok.vocab_size), device=device, seed=0).eval()
    files = {p.name: p.read_bytes() for p in (d / "tok").iterdir() if p.is_file()}
    return save_checkpoint(model.cpu(), d / "llama", fmt="llama", extra_files=files)


def main() -> dict:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from ilm.eval.lm import EvalModel
    from ilm.eval.runner import evaluate_task
    from ilm.eval.tasks import SHIPPED, load_task

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rounds = 1 if QUICK else 5
    out: dict = {"device": device, "preset": "small", "batch_size": 8, "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(Path(tmp))
        ours_lm = EvalModel(ckpt, device=device, batch_size=8)
        theirs_lm = HFLM(pretrained=str(ckpt), dtype="float32", batch_size=8, device=device)
        tm = TaskManager(include_path=str(SHIPPED))
        for name, limit in TASKS.items():
            limit = min(limit or 10**9, 4) if QUICK else limit
            best = {"ilm": 0.0, "lm_eval": 0.0}
            ratios = []
            for _ in range(rounds):
                t = time.perf_counter()
                mine = evaluate_task(ours_lm, load_task(name), limit=limit)
                ours_rate = mine["samples_n"] / (time.perf_counter() - t)
                t = time.perf_counter()
                res = lm_eval.simple_evaluate(model=theirs_lm, tasks=[name], task_manager=tm, limit=limit,
                                              verbosity="ERROR")
                theirs_rate = mine["samples_n"] / (time.perf_counter() - t)
                best = {"ilm": max(best["ilm"], ours_rate), "lm_eval": max(best["lm_eval"], theirs_rate)}
                ratios.append(ours_rate / theirs_rate)
            theirs = res["results"][name]
            if "acc" in mine["metrics"]:
                agree = theirs["acc,none"] == mine["metrics"]["acc"]
            elif "bits_per_byte" in mine["metrics"]:
                agree = math.isclose(theirs["bits_per_byte,none"], mine["metrics"]["bits_per_byte"], rel_tol=1e-4)
            else:
                agree = bool(theirs["exact_match,flexible-extract"] == mine["metrics"]["exact_match"])
            out["tasks"][name] = {"samples": mine["samples_n"], "ilm_samples_per_s": best["ilm"],
                                  "lm_eval_samples_per_s": best["lm_eval"], "ratio": best["ilm"] / best["lm_eval"],
                                  "median_round_ratio": statistics.median(ratios), "round_ratios": ratios,
                                  "metrics_agree": agree}
    print(f"{'task':<18} {'samples':>7} {'ilm/s':>9} {'lm-eval/s':>10} {'ratio':>7} {'median':>7}  agree")
    for name, r in out["tasks"].items():
        print(f"{name:<18} {r['samples']:>7} {r['ilm_samples_per_s']:>9.2f} {r['lm_eval_samples_per_s']:>10.2f} "
              f"{r['ratio']:>6.2f}x {r['median_round_ratio']:>6.2f}x  {r['metrics_agree']}")
    return out


if __name__ == "__main__":
    main()
