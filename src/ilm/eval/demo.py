"""The demo's eval step: held-out perplexity and one small shipped task on the demo's checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path


def run(out: Path, checkpoint: Path, quick: bool = True) -> dict:
    """Perplexity on the Apache License text (not in the demo's corpus) and the stdlib multiple-choice task;
    writes `out/eval/results.json` and returns the key numbers.

    The checkpoint should carry its tokenizer (the demo's Llama copy does); if it does not, the demo's
    `out/tokenizer` is used."""
    from ilm.eval.lm import EvalModel
    from ilm.eval.runner import evaluate_task, table
    from ilm.eval.tasks import load_task

    out, checkpoint = Path(out), Path(checkpoint)
    tokenizer = None
    if not (checkpoint / "tokenizer.json").is_file() and (out / "tokenizer" / "tokenizer.json").is_file():
        tokenizer = out / "tokenizer"
    lm = EvalModel(checkpoint, batch_size=8, tokenizer=tokenizer)
    # quick: the first 4 license sections (the multiple-choice task is short: all of it either way)
    results = [evaluate_task(lm, load_task("ilm_license_ppl"), limit=4 if quick else None),
               evaluate_task(lm, load_task("ilm_stdlib_mc"))]
    res = {"checkpoint": str(checkpoint), "max_length": lm.max_length, "batch_size": lm.batch_size,
           "fewshot_seed": 1234, "results": results}
    path = out / "eval" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print("[eval] " + table(res["results"]).replace("\n", "\n[eval] "))
    ppl, mc = (r["metrics"] for r in res["results"])
    return {"results": str(path), "checkpoint": str(checkpoint),
            "ppl_docs": res["results"][0]["samples_n"], "bits_per_byte": ppl["bits_per_byte"],
            "token_perplexity": ppl["token_perplexity"], "word_perplexity": ppl["word_perplexity"],
            "mc_task": "ilm_stdlib_mc", "mc_questions": res["results"][1]["samples_n"],
            "mc_acc": mc["acc"], "mc_acc_norm": mc["acc_norm"],
            "seconds": sum(r["seconds"] for r in res["results"])}
