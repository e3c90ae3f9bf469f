"""Run tasks against a checkpoint: the metrics, the per-sample records and the results table.

Metrics are lm-eval's, computed the same way, so the numbers can be compared line by line:
- multiple choice: `acc` (argmax of the choices' log-likelihoods) and `acc_norm` (argmax of log-likelihood
  per character of the choice);
- perplexity (`loglikelihood_rolling`): `word_perplexity` (exp of the negative log-likelihood per
  whitespace-separated word), `byte_perplexity`, `bits_per_byte` (comparable across tokenizers), and
  `token_perplexity` (ilm's own: per token of this tokenizer);
- generation: `exact_match` of the number after `####` in the reference against the number the model gave
  (after its own `####` if it wrote one, else the last number in its answer).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

from ilm.eval.lm import EvalModel
from ilm.eval.tasks import Task

NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def extract_number(text: str) -> str | None:
    """The answer number of a GSM8K-style solution: after `####` if present, else the last number."""
    if "####" in text:
        text = text.split("####", 1)[1]
        found = NUMBER.findall(text)
        return _canon(found[0]) if found else None
    found = NUMBER.findall(text)
    return _canon(found[-1]) if found else None


def _canon(n: str) -> str:
    n = n.replace(",", "").rstrip(".")
    if "." in n:
        n = n.rstrip("0").rstrip(".")
    return n or "0"


def evaluate_task(lm: EvalModel, task: Task, num_fewshot: int | None = None, limit: int | None = None,
                  seed: int = 1234) -> dict[str, Any]:
    docs = task.eval_docs()
    docs = docs[:limit] if limit else docs
    start = time.perf_counter()
    samples: list[dict] = []
    if task.kind == "loglikelihood_rolling":
        texts = [str(task.target(d)) for d in docs]
        scored = lm.loglikelihood_rolling(texts)
        for i, (text, (ll, n)) in enumerate(zip(texts, scored)):
            samples.append({"doc_id": i, "loglikelihood": ll, "tokens": n, "words": len(re.split(r"\s+", text)),
                            "bytes": len(text.encode("utf-8"))})
        ll = sum(s["loglikelihood"] for s in samples)
        words, nbytes, tokens = (sum(s[k] for s in samples) for k in ("words", "bytes", "tokens"))
        metrics = {"word_perplexity": math.exp(-ll / words), "byte_perplexity": math.exp(-ll / nbytes),
                   "bits_per_byte": -ll / nbytes / math.log(2), "token_perplexity": math.exp(-ll / tokens)}
    elif task.kind == "multiple_choice":
        contexts = task.contexts(docs, num_fewshot, seed)
        pairs, spans = [], []
        for ctx, doc in zip(contexts, docs):
            choices = task.choices(doc)
            spans.append((len(pairs), choices))
            pairs += [(ctx, task.target_delimiter + c) for c in choices]
        scored = lm.loglikelihood(pairs)
        for i, (doc, (first, choices)) in enumerate(zip(docs, spans)):
            lls = [s[0] for s in scored[first : first + len(choices)]]
            gold = task.gold(doc)
            pred = max(range(len(lls)), key=lambda j: lls[j])
            pred_norm = max(range(len(lls)), key=lambda j: lls[j] / len(choices[j]))
            samples.append({"doc_id": i, "gold": gold, "loglikelihoods": lls, "pred": pred,
                            "acc": float(pred == gold), "acc_norm": float(pred_norm == gold)})
        metrics = {k: sum(s[k] for s in samples) / len(samples) for k in ("acc", "acc_norm")}
    else:
        contexts = task.contexts(docs, num_fewshot, seed)
        outs = lm.generate_until(contexts, task.until, task.max_gen_toks)
        for i, (doc, out) in enumerate(zip(docs, outs)):
            ref = extract_number(str(task.target(doc)))
            got = extract_number(out)
            samples.append({"doc_id": i, "generation": out, "reference": ref, "extracted": got,
                            "exact_match": float(ref is not None and got == ref)})
        metrics = {"exact_match": sum(s["exact_match"] for s in samples) / len(samples)}
    seconds = time.perf_counter() - start
    return {"task": task.name, "opencompass": task.opencompass, "kind": task.kind, "source": str(task.source),
            "num_fewshot": task.num_fewshot if num_fewshot is None else num_fewshot, "samples_n": len(docs),
            "metrics": metrics, "seconds": seconds, "samples_per_s": len(docs) / seconds if seconds else None,
            "samples": samples}


def table(results: list[dict]) -> str:
    """The results as OpenCompass prints them: dataset, version, metric, mode, then the model's column."""
    rows = [("dataset", "task", "metric", "mode", "n", "ilm")]
    mode = {"multiple_choice": "ppl", "loglikelihood_rolling": "ppl", "generate_until": "gen"}
    for r in results:
        for k, v in r["metrics"].items():
            value = f"{100 * v:.2f}" if k in ("acc", "acc_norm", "exact_match") else f"{v:.4f}"
            rows.append((r["opencompass"], r["task"], k, mode[r["kind"]], str(r["samples_n"]), value))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(checkpoint: str | Path, tasks: list[Task], num_fewshot: int | None = None, batch_size: int = 8,
        limit: int | None = None, device: str | None = None, max_length: int | None = None,
        seed: int = 1234, tokenizer: str | Path | None = None) -> dict[str, Any]:
    for task in tasks:  # every task file is read and checked before the model loads
        task.eval_docs()
        if task.fewshot_split and (num_fewshot if num_fewshot is not None else task.num_fewshot):
            task.docs(task.fewshot_split)
    lm = EvalModel(checkpoint, device=device, batch_size=batch_size, max_length=max_length,
                   tokenizer=tokenizer)
    results = [evaluate_task(lm, t, num_fewshot, limit, seed) for t in tasks]
    return {"checkpoint": str(checkpoint), "max_length": lm.max_length, "batch_size": batch_size,
            "fewshot_seed": seed, "results": results}
