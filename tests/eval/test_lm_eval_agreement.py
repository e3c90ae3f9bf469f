"""`ilm eval` and lm-evaluation-harness (`--model hf`) on the same exported Llama checkpoint and the same
task YAML (the shipped ones, plus a few-shot one written here with plain `dataset_path: json` +
`data_files`): identical accuracy, the same prompts, per-sample log-likelihoods within 1e-4, perplexity
within 1e-4 relative, the same greedy generations. Nothing is downloaded."""

import json
import math
import os

import pytest

from ilm.eval.runner import run
from ilm.eval.tasks import SHIPPED, load_task

pytest.importorskip("lm_eval")

LIMITS = {"ilm_stdlib_mc": 12, "ilm_license_ppl": 3, "ilm_stdlib_arith": 2, "fewshot_mc": 6, "fewshot_arith": 2}


def _fewshot_yamls(tmp_path):
    """Few-shot variants over the shipped data: MC with lm-eval's seeded sampler (not first_n) and a prompt
    ending in a space (which moves to the continuation), and generation with 2 shots; absolute data_files,
    no custom loader."""
    data = SHIPPED.parent
    mc = (SHIPPED / "ilm_stdlib_mc.yaml").read_text()
    mc = (mc.replace("task: ilm_stdlib_mc", "task: fewshot_mc").replace("sampler: first_n", "sampler: default")
          .replace("num_fewshot: 0", "num_fewshot: 3").replace("custom_dataset: !function ilm_local.load_json\n", "")
          .replace("../stdlib_mc", f"{data}/stdlib_mc").replace('Answer:"', 'Answer: "')
          .replace("output_type:", 'target_delimiter: ""\noutput_type:'))
    ar = (SHIPPED / "ilm_stdlib_arith.yaml").read_text()
    ar = (ar.replace("task: ilm_stdlib_arith", "task: fewshot_arith").replace("num_fewshot: 0", "num_fewshot: 2")
          .replace("custom_dataset: !function ilm_local.load_json\n", "").replace("max_gen_toks: 64", "max_gen_toks: 24")
          .replace("../stdlib_arith", f"{data}/stdlib_arith"))
    d = tmp_path / "yaml"
    d.mkdir()
    (d / "fewshot_mc.yaml").write_text(mc)
    (d / "fewshot_arith.yaml").write_text(ar)
    assert "custom_dataset" not in mc and "dataset_path: json" in mc
    return d


def _lm_eval(checkpoint, include, names):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=[str(SHIPPED), str(include)])
    out = {}
    for name in names:  # one call per task: each its own --limit
        r = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={checkpoint},dtype=float32", tasks=[name],
                                    task_manager=tm, log_samples=True, limit=LIMITS[name], batch_size=4,
                                    device="cpu")
        out[name] = (r["results"][name], sorted(r["samples"][name], key=lambda s: s["doc_id"]))
    return out


def test_ilm_eval_agrees_with_lm_eval_harness(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_llama)  # lm-eval's hf model loads the exported tokenizer this way
    include = _fewshot_yamls(tmp_path)
    names = list(LIMITS)
    theirs = _lm_eval(tiny_llama, include, names)
    tasks = {n: load_task(str(SHIPPED / f"{n}.yaml") if n.startswith("ilm_") else str(include / f"{n}.yaml"))
             for n in names}
    ours = {n: run(tiny_llama, [tasks[n]], limit=LIMITS[n], batch_size=3)["results"][0] for n in names}

    for name in ("ilm_stdlib_mc", "fewshot_mc"):
        res, samples = theirs[name]
        mine = ours[name]
        docs = tasks[name].eval_docs()[: LIMITS[name]]
        contexts = tasks[name].contexts(docs)
        assert len(samples) == len(mine["samples"]) == LIMITS[name]
        for s, m, ctx in zip(samples, mine["samples"], contexts):
            assert s["arguments"][0][0] == ctx  # the same prompt, shots included
            lls = [r[0][0] for r in s["resps"]]
            assert max(abs(a - b) for a, b in zip(lls, m["loglikelihoods"])) < 1e-4, (name, s["doc_id"])
            assert s["acc"] == m["acc"] and s["acc_norm"] == m["acc_norm"]
        assert res["acc,none"] == mine["metrics"]["acc"]
        assert res["acc_norm,none"] == mine["metrics"]["acc_norm"]

    res, samples = theirs["ilm_license_ppl"]
    mine = ours["ilm_license_ppl"]
    assert max(m["tokens"] for m in mine["samples"]) > 2 * 256  # rolling windows were needed
    for s, m in zip(samples, mine["samples"]):
        assert math.isclose(s["resps"][0][0], m["loglikelihood"], rel_tol=1e-6, abs_tol=1e-4)  # sums of ~3k tokens
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert math.isclose(res[f"{metric},none"], mine["metrics"][metric], rel_tol=1e-4), metric

    for name in ("ilm_stdlib_arith", "fewshot_arith"):
        res, samples = theirs[name]
        mine = ours[name]
        for s, m in zip(samples, mine["samples"]):
            assert s["resps"][0][0] == m["generation"]  # the same greedy text, cut at the same stop strings
    json.dumps(ours)  # the results are JSON as they stand
