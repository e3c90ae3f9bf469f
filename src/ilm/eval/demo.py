"""The demo's eval step: held-out perplexity and one small shipped task on the demo's checkpoint, through
lm-evaluation-harness with the `ilm` model (`ilm.eval.runner`)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def run(out: Path, checkpoint: Path, quick: bool = True) -> dict:
    """Perplexity on the Apache License text (not in the demo's corpus) and the stdlib multiple-choice task;
    writes `out/eval/results.json` and returns the key numbers.

    The checkpoint should carry its tokenizer (the demo's Llama copy does); if it does not, the demo's
    `out/tokenizer` is used."""
    from ilm.eval.harness import IlmLM
    from ilm.eval.runner import evaluate, offline, table, task_manager

    offline()
    out, checkpoint = Path(out), Path(checkpoint)
    tokenizer = None
    if not (checkpoint / "tokenizer.json").is_file() and (out / "tokenizer" / "tokenizer.json").is_file():
        tokenizer = str(out / "tokenizer")
    lm = IlmLM(pretrained=str(checkpoint), tokenizer=tokenizer, batch_size=8, progress=False)
    tm = task_manager(full=False)
    # quick: the first 4 license sections (the multiple-choice task is short: all of it either way)
    results = (evaluate(lm, ["ilm_license_ppl"], tm, limit=4 if quick else None, bootstrap_iters=0)
               + evaluate(lm, ["ilm_stdlib_mc"], tm, bootstrap_iters=0))
    res = {"checkpoint": str(checkpoint), "max_length": lm.engine.max_length, "batch_size": lm.engine.batch_size,
           "fewshot_seed": 1234, "results": results}
    path = out / "eval" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print("[eval] " + table(res["results"]).replace("\n", "\n[eval] "))
    ppl, mc = (r["metrics"] for r in res["results"])
    n = res["results"][1]["samples_n"]
    chance, p_value = mc_chance(n, mc["acc"])
    verdict = "above chance" if p_value < 0.05 else "NOT above chance (what a guesser scores this often)"
    print(f"[eval] the pretrained model of the chain on ilm_stdlib_mc: acc {mc['acc']:.1%} on {n} questions vs chance "
          f"{chance:.1%} (4 choices each); a guesser scores at least this with probability {p_value:.2f}: {verdict}")
    return {"results": str(path), "checkpoint": str(checkpoint),
            "ppl_docs": res["results"][0]["samples_n"], "bits_per_byte": ppl["bits_per_byte"],
            "token_perplexity": ppl.get("token_perplexity"), "word_perplexity": ppl["word_perplexity"],
            "mc_task": "ilm_stdlib_mc", "mc_questions": res["results"][1]["samples_n"],
            "mc_acc": mc["acc"], "mc_acc_norm": mc["acc_norm"], "mc_chance": chance, "mc_p_value": p_value,
            "seconds": sum(r["seconds"] for r in res["results"])}


def mc_chance(n: int, acc: float, choices: int = 4) -> tuple[float, float]:
    """Chance accuracy of the 4-choice task and the probability that guessing scores at least `acc` on `n`
    questions (the binomial tail): how far a small model's score is from a guesser's."""
    from math import comb

    p = 1.0 / choices
    k = round(acc * n)
    return p, sum(comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))
