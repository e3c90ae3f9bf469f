"""Task specs for `ilm eval run`: lm-eval task names, task YAML files, bare jsonl files, local data.

lm-evaluation-harness owns what a task is (its YAML, few-shot sampling, filters, metrics); this module only
turns what a user types into what lm-eval loads, and checks local data files before a model is loaded:
- a name: one of lm-eval's ~14,000 tasks/groups, or one shipped with ilm (`ilm/eval/tasks/lm_eval/*.yaml`);
- a `.yaml` file: an lm-eval task YAML (loaded by path; `include:` and `!function` resolve next to it);
- a `.jsonl` file: a small lm-eval YAML is written for it from its fields (MMLU, C-Eval, GSM8K or text);
- `--data TASK:SPLIT=FILE`: a YAML that `include`s TASK's own config and points its split(s) at local json
  files (`dataset_path: json`), so lm-eval's own prompt, filters and metrics run offline on a local copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).resolve().parent / "tasks" / "lm_eval"

# lm-eval task name -> the dataset abbreviation OpenCompass reports (prefix rules first, then exact names)
OPENCOMPASS_PREFIXES = (("mmlu_", "lukaemon_mmlu_"), ("ceval-valid_", "ceval-"), ("ceval_", "ceval-"),
                        ("cmmlu_", "cmmlu-"), ("bbh_cot_fewshot_", "bbh-"), ("bbh_", "bbh-"))
OPENCOMPASS_NAMES = {"gsm8k": "gsm8k", "mmlu": "mmlu", "ceval": "ceval", "ceval-valid": "ceval", "cmmlu": "cmmlu",
                     "wikitext": "wikitext-2", "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "hellaswag": "hellaswag",
                     "winogrande": "winogrande", "piqa": "piqa", "lambada_openai": "lambada", "lambada": "lambada",
                     "triviaqa": "triviaqa", "humaneval": "openai_humaneval", "mbpp": "mbpp", "race": "race-high",
                     "minerva_math": "math", "bbh": "bbh", "nq_open": "nq", "siqa": "siqa", "boolq": "BoolQ",
                     "openbookqa": "openbookqa"}


class TaskError(ValueError):
    """A task file that cannot be used (a user's mistake: one line, no traceback)."""


def opencompass_name(name: str, meta: dict | None = None) -> str:
    if meta and meta.get("opencompass"):
        return str(meta["opencompass"])
    if name in OPENCOMPASS_NAMES:
        return OPENCOMPASS_NAMES[name]
    for ours, theirs in OPENCOMPASS_PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name


def read_jsonl(path: Path, required: list[str] = ()) -> list[dict]:
    """Every line a JSON object carrying the required fields; otherwise one error that names the file,
    how many lines are bad and the first three of them (with their line numbers)."""
    docs, bad = [], []
    if not Path(path).is_file():
        raise TaskError(f"{path}: not found (a task data file)")
    with open(path, encoding="utf-8") as f:
        try:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as err:
                    bad.append(f"line {i}: not JSON ({err.msg})")
                    continue
                if not isinstance(doc, dict):
                    bad.append(f"line {i}: not a JSON object")
                    continue
                missing = [k for k in required if k not in doc]
                if missing:
                    bad.append(f"line {i}: missing field {', '.join(map(repr, missing))}")
                    continue
                docs.append(doc)
        except UnicodeDecodeError as err:
            raise TaskError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if bad:
        shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        raise TaskError(f"{path}: {len(bad)} bad line(s) of {len(bad) + len(docs)}: {shown}")
    if not docs:
        raise TaskError(f"{path}: no documents")
    return docs


def shipped() -> dict[str, Path]:
    """The tasks that ship with ilm: name -> YAML file."""
    import yaml

    out = {}
    for p in sorted(SHIPPED.glob("*.yaml")):
        text = p.read_text(encoding="utf-8")
        cfg = yaml.safe_load("\n".join(line for line in text.splitlines() if "!function" not in line))
        out[cfg.get("task", p.stem)] = p
    return out


def _dump(cfg: dict, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _first_object(path: Path) -> dict:
    """The first line that is a JSON object (its fields say the kind); with none, `read_jsonl`'s error."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                return doc
    read_jsonl(path)  # raises: names the bad lines and counts them
    raise TaskError(f"{path}: no documents")


def jsonl_task_yaml(path: Path, out_dir: Path) -> Path:
    """An lm-eval task YAML for a bare jsonl file, its kind read from its fields; `NAME.dev.jsonl` beside it
    is the few-shot split. Every line is checked first (one error naming the file and the bad lines)."""
    doc, name = _first_object(path), path.stem
    files = {"test": str(path.resolve())}
    dev = path.with_name(path.stem + ".dev.jsonl")
    if dev.is_file():
        read_jsonl(dev)
        files["dev"] = str(dev.resolve())
    cfg: dict[str, Any] = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": files},
                           "test_split": "test"}
    if "dev" in files:
        cfg.update(fewshot_split="dev", fewshot_config={"sampler": "first_n"})
    if "text" in doc and "question" not in doc:
        required = ["text"]
        cfg.update(output_type="loglikelihood_rolling", doc_to_text="", doc_to_target="text",
                   metric_list=[{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")])
    elif "choices" in doc and "question" in doc and "answer" in doc:  # MMLU: answer an index or a letter
        required = ["question", "choices", "answer"]
        letters = "ABCDEFGHIJ"[: len(doc["choices"])]
        text = "{{question.strip()}}\n" + "".join(f"{c}. {{{{choices[{i}]}}}}\n" for i, c in enumerate(letters))
        cfg.update(output_type="multiple_choice", doc_to_text=text + "Answer:", doc_to_choice=list(letters),
                   doc_to_target=f"{{{{answer if answer is number else '{letters}'.index(answer)}}}}",
                   metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])
    elif all(k in doc for k in ("question", "A", "B", "C", "D", "answer")):  # C-Eval
        required = ["question", "A", "B", "C", "D", "answer"]
        text = "{{question.strip()}}\n" + "".join(f"{c}. {{{{{c}}}}}\n" for c in "ABCD") + "答案："
        cfg.update(output_type="multiple_choice", doc_to_text=text, doc_to_choice=list("ABCD"),
                   doc_to_target="{{'ABCD'.index(answer)}}", metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])
    elif "question" in doc and "answer" in doc:  # GSM8K: lm-eval's gsm8k prompt, stops and filters
        required = ["question", "answer"]
        cfg.update(include=_lm_eval_yaml("gsm8k"), doc_to_text="Question: {{question}}\nAnswer:")
        cfg.update(fewshot_split="dev" if "dev" in files else "test", num_fewshot=0, dataset_name=None,
                   training_split=None)
        cfg["fewshot_config"] = {"sampler": "first_n"}
    else:
        raise TaskError(f"{path}: line 1 has none of the fields of a known task kind "
                        "(text | question+choices+answer | question+A..D+answer | question+answer)")
    for f in files.values():
        read_jsonl(Path(f), required)
    cfg["metadata"] = {"version": 1.0, "opencompass": opencompass_name(name)}
    return _dump(cfg, out_dir / f"{name}.yaml")


def _lm_eval_yaml(name: str) -> str:
    """A task YAML lm-eval ships under lm_eval/tasks/NAME/NAME.yaml."""
    import lm_eval.tasks

    return str(Path(lm_eval.tasks.__file__).parent / name / f"{name}.yaml")


def task_yaml_path(tm, name: str) -> Path:
    """The YAML file lm-eval (or ilm) defines a task in."""
    entry = tm.task_index.get(name)
    if entry is None or entry.yaml_path is None:
        raise TaskError(f"unknown task {name!r}: not one of lm-eval's tasks (`lm_eval ls tasks`) or ilm's "
                        f"({', '.join(shipped())})")
    return Path(entry.yaml_path)


def parse_data_flags(flags: list[str]) -> dict[str, dict[str, str]]:
    """`TASK:SPLIT=FILE` strings -> {task: {split: absolute file}}."""
    out: dict[str, dict[str, str]] = {}
    for flag in flags:
        task, sep, rest = flag.partition(":")
        split, eq, file = rest.partition("=")
        if not (sep and eq and task and split and file):
            raise TaskError(f"--data {flag!r}: expected TASK:SPLIT=FILE (e.g. hellaswag:validation=hs.jsonl)")
        p = Path(file).expanduser()
        if not p.is_file():
            raise TaskError(f"--data {flag!r}: no such file: {p}")
        out.setdefault(task, {})[split] = str(p.resolve())
    return out


def local_task_yaml(tm, name: str, data_files: dict[str, str], out_dir: Path, **overrides: Any) -> Path:
    """A YAML that runs task `name`'s own config (prompt, few-shot, filters, metrics) on local json(l)
    files: it `include`s the task's YAML and sets `dataset_path: json` with these data_files (the files in
    the task's own schema: the fields its templates and `process_docs` read). `overrides`: other top-level
    keys to replace (e.g. `generation_kwargs`)."""
    for f in data_files.values():
        if str(f).endswith((".json", ".jsonl")):
            read_jsonl(Path(f))
    from lm_eval.tasks._yaml_loader import load_yaml

    base = task_yaml_path(tm, name)
    own = load_yaml(base, resolve_func=False)
    cfg = {"include": str(base), "task": name, "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": {k: str(v) for k, v in data_files.items()}}}
    # splits the task names but the local copy lacks are dropped (the few-shot split falls back as lm-eval's)
    for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
        if own.get(key) and own[key] not in data_files:
            cfg[key] = None
    evals = [own.get(k) for k in ("test_split", "validation_split") if own.get(k)]
    if not any(e in data_files for e in evals):
        raise TaskError(f"--data for {name!r}: give its evaluation split ({' or '.join(evals) or 'test'}); "
                        f"got {', '.join(data_files)}")
    cfg.update(overrides)
    return _dump(cfg, out_dir / f"{name}.local.yaml")


def check_yaml_data(path: Path) -> None:
    """Check the local json(l) files a task YAML reads, before any model loads (lm-eval would fail later,
    with a traceback, on the first bad line)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(path, resolve_func=False)
    except Exception as err:  # noqa: BLE001 - a YAML error or a missing include, said in one line
        raise TaskError(f"{path}: cannot read the task YAML ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") if cfg.get("dataset_path") == "json" else None
    if isinstance(files, str):
        files = {"data": files}
    for f in (files or {}).values():
        for one in [f] if isinstance(f, str) else list(f):
            p = Path(one)  # the datasets library reads relative paths from the working directory
            if p.suffix in (".json", ".jsonl") and p.is_file():
                read_jsonl(p)
