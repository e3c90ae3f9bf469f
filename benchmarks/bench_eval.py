"""Evaluation samples/s: lm-evaluation-harness with `--model ilm` against `--model hf`, the same task configs
(lm-eval runs both: prompts, few-shot, filters, metrics), the same exported Llama checkpoint.

The checkpoint: the `small` preset with random weights and a tokenizer trained on the tasks' own text
(vocab 1024), exported in Llama format with its tokenizer, fp32, batch size 8 on both, on CPU (CUDA when
present). Each side loads the model once, outside the timing; a timed round is one
`lm_eval.simple_evaluate` of one task (building its requests, scoring them, its metrics). Rounds are
interleaved A,B,B,A,...; reported: the median of the per-pair ratios (ilm's samples/s over hf's in the same
pair) with their range, and the best round of each. The numbers are checked to agree (accuracy equal,
perplexity within 1e-4 relative, exact match equal).
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
    import torch
    from lm_eval.models.huggingface import HFLM

    from ilm.eval.harness import IlmLM
    from ilm.eval.runner import evaluate, offline, task_manager

    offline()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pairs = 1 if QUICK else 3  # each pair: ilm,hf then hf,ilm
    out: dict = {"device": device, "preset": "small", "batch_size": 8, "dtype": "float32", "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(Path(tmp))
        sides = {"ilm": IlmLM(pretrained=str(ckpt), device=device, batch_size=8, progress=False),
                 "hf": HFLM(pretrained=str(ckpt), dtype="float32", batch_size=8, device=device, add_bos_token=True)}
        print(f"--model ilm: pretrained={ckpt.name}, dtype float32, batch_size 8, device {device} "
              "(prefix-shared length-sorted scoring, KV-cache generator)")
        print(f"--model hf:  pretrained={ckpt.name}, dtype float32, add_bos_token, batch_size 8, device {device} (HFLM)")
        tm = task_manager(full=False)
        for name, limit in TASKS.items():
            limit = min(limit or 10**9, 4) if QUICK else limit
            rates: dict[str, list[float]] = {"ilm": [], "hf": []}
            res: dict = {}
            for r in range(2 * pairs):
                for side in (("ilm", "hf") if r % 2 == 0 else ("hf", "ilm")):
                    t = time.perf_counter()
                    res[side] = evaluate(sides[side], [name], tm, limit=limit, bootstrap_iters=0)[0]
                    rates[side].append(res[side]["samples_n"] / (time.perf_counter() - t))
            ratios = [a / b for a, b in zip(rates["ilm"], rates["hf"])]
            mine, theirs = res["ilm"]["metrics"], res["hf"]["metrics"]
            agree = all(math.isclose(mine[k], v, rel_tol=1e-4) if "perplexity" in k or "bits" in k else mine[k] == v
                        for k, v in theirs.items())
            out["tasks"][name] = {"samples": res["ilm"]["samples_n"], "kind": res["ilm"]["kind"],
                                  "ilm_samples_per_s": max(rates["ilm"]), "hf_samples_per_s": max(rates["hf"]),
                                  "median_ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
                                  "ratios": ratios, "metrics_agree": agree}
    print(f"{'task':<18} {'samples':>7} {'ilm/s':>9} {'hf/s':>9} {'median':>7} {'range':>13}  agree")
    for name, r in out["tasks"].items():
        lo, hi = r["ratio_range"]
        print(f"{name:<18} {r['samples']:>7} {r['ilm_samples_per_s']:>9.2f} {r['hf_samples_per_s']:>9.2f} "
              f"{r['median_ratio']:>6.2f}x {lo:>5.2f}-{hi:<5.2f}x  {r['metrics_agree']}")
    return out


if __name__ == "__main__":
    main()
