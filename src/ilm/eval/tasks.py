"""Evaluation tasks: what a task file says, how its documents load, and how a prompt is built from them.

A task is described by the same YAML that lm-evaluation-harness reads (a subset of its keys), so the one
file drives both `ilm eval run --tasks FILE.yaml` and `lm_eval --include_path DIR`; the shipped tasks under
`ilm/eval/tasks/lm_eval/` are exactly such files. A bare `.jsonl` file is a task too: its kind is read
from its fields (`text` -> perplexity; `question` + `choices` + `answer` -> multiple choice;
`question` + `answer` with `#### N` -> GSM8K-style generation).

Prompts follow lm-eval's plain-text rules, because agreement with it is the point: the few-shot context is
`description + (question + target_delimiter + answer + fewshot_delimiter) * n + question`, each choice is
scored as the continuation `target_delimiter + choice`, and few-shot examples are drawn by a
`random.Random(seed)` shared across the documents in order (`sampler: first_n` takes the first n instead).
"""

from __future__ import annotations

import ast
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).resolve().parent / "tasks" / "lm_eval"

KINDS = ("multiple_choice", "loglikelihood_rolling", "generate_until")

# Task-name prefixes of the usual benchmarks -> the dataset abbreviation OpenCompass reports them under.
OPENCOMPASS_PREFIXES = (("mmlu_", "lukaemon_mmlu_"), ("ceval_", "ceval-"), ("cmmlu_", "cmmlu-"))
OPENCOMPASS_NAMES = {"gsm8k": "gsm8k", "mmlu": "mmlu", "ceval": "ceval", "wikitext": "wikitext-2"}


class TaskError(ValueError):
    """A task file that cannot be used (a user's mistake: one line, no traceback)."""


@dataclass
class Task:
    name: str
    kind: str
    source: Path  # the YAML or jsonl file it came from
    splits: dict[str, Path]  # split name -> jsonl file
    test_split: str = "test"
    fewshot_split: str | None = None
    doc_to_text: str = "question"
    doc_to_target: str | int = "answer"
    doc_to_choice: str | list[str] | None = None
    description: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    num_fewshot: int = 0
    sampler: str = "default"
    until: list[str] = field(default_factory=lambda: ["\n\n", "Question:"])
    max_gen_toks: int = 256
    opencompass: str = ""
    _docs: dict[str, list[dict]] = field(default_factory=dict, repr=False)

    # -- documents -----------------------------------------------------------------------------------
    def docs(self, split: str) -> list[dict]:
        if split not in self._docs:
            if split not in self.splits:
                raise TaskError(f"{self.source}: task {self.name!r} has no {split!r} split (has: {', '.join(self.splits)})")
            self._docs[split] = read_jsonl(self.splits[split], self.required_fields())
        return self._docs[split]

    def eval_docs(self) -> list[dict]:
        return self.docs(self.test_split)

    def required_fields(self) -> list[str]:
        """Fields every line must carry: those the templates name (a missing answer is caught per line)."""
        names: list[str] = []
        for t in (self.doc_to_text, self.doc_to_target, self.doc_to_choice):
            if isinstance(t, str):
                names += [t] if _is_field(t) else _template_fields(t)
        return sorted(set(names))

    # -- templates (lm-eval's conventions) -----------------------------------------------------------
    def text(self, doc: dict) -> str:
        return str(_render(self.doc_to_text, doc))

    def target(self, doc: dict) -> Any:
        t = self.doc_to_target
        if isinstance(t, int):
            return t
        if t in doc:
            return doc[t]
        s = _render(t, doc)
        if s.isdigit() and self.doc_to_choice is not None:
            return ast.literal_eval(s)
        if len(s) >= 2 and s[0] == "[" and s[-1] == "]":
            try:
                return ast.literal_eval(s)
            except (SyntaxError, ValueError):
                return s
        return s

    def choices(self, doc: dict) -> list[str]:
        c = self.doc_to_choice
        if isinstance(c, list):
            return [str(x) for x in c]
        if c is None:
            raise TaskError(f"{self.source}: task {self.name!r} is multiple choice but sets no doc_to_choice")
        if c in doc:
            return list(doc[c])
        return list(ast.literal_eval(_render(c, doc)))

    def gold(self, doc: dict) -> int:
        """The index of the right choice (an int, or a choice's text, as lm-eval accepts)."""
        target, choices = self.target(doc), self.choices(doc)
        if isinstance(target, str):
            return choices.index(target) if target in choices else -1
        return int(target) if int(target) < len(choices) else -1

    def answer_text(self, doc: dict) -> str:
        """The answer as written after a few-shot question."""
        a = self.target(doc)
        if self.kind == "multiple_choice" and isinstance(a, int):
            return self.choices(doc)[a]
        return a[0] if isinstance(a, list) else str(a)

    # -- prompts -------------------------------------------------------------------------------------
    def contexts(self, docs: list[dict], num_fewshot: int | None = None, seed: int = 1234) -> list[str]:
        """The prompt for each document, in order (the sampler's state runs through the documents, as in
        lm-eval, so a document's shots depend on its position: evaluate the same list to get the same)."""
        n = self.num_fewshot if num_fewshot is None else num_fewshot
        pool = self.docs(self.fewshot_split) if n > 0 and self.fewshot_split else []
        if n > 0 and not pool:
            raise TaskError(f"{self.source}: {n}-shot asked for but task {self.name!r} has no fewshot_split")
        if n > len(pool) and n > 0:
            raise TaskError(f"{self.source}: {n}-shot asked for but the {self.fewshot_split!r} split has {len(pool)}")
        same = self.fewshot_split == self.test_split
        rng = random.Random(seed)
        out = []
        for doc in docs:
            if n == 0:
                shots = []
            elif self.sampler == "first_n":
                shots = ([d for d in pool if d != doc] if same else pool)[:n]
            elif same:
                shots = [d for d in rng.sample(pool, n + 1) if d != doc][:n]
            else:
                shots = rng.sample(pool, n)
            parts = [str(_render(self.description, doc)) if self.description else ""]  # a template, as in lm-eval
            for s in shots:
                parts.append(self.text(s) + self.target_delimiter + self.answer_text(s) + self.fewshot_delimiter)
            parts.append(self.text(doc))
            out.append("".join(parts))
        return out


# -- loading -----------------------------------------------------------------------------------------------
def _is_field(t: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t) is not None


def _template_fields(t: str) -> list[str]:
    import jinja2.meta

    return sorted(jinja2.meta.find_undeclared_variables(_env().parse(t)))


_ENV = None


def _env():
    global _ENV
    if _ENV is None:
        import jinja2

        _ENV = jinja2.Environment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined,
                                  keep_trailing_newline=True)
    return _ENV


_COMPILED: dict[str, Any] = {}


def _render(t: str, doc: dict) -> Any:
    if _is_field(t) and t in doc:
        return doc[t]
    if t not in _COMPILED:  # compiling a template costs far more than rendering it
        _COMPILED[t] = _env().from_string(t)
    return _COMPILED[t].render(**doc)


def read_jsonl(path: Path, required: list[str]) -> list[dict]:
    """Every line a JSON object carrying the required fields; otherwise one error that names the file,
    the first bad lines and how many there are."""
    docs, bad = [], []
    with open(path, encoding="utf-8") as f:
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
    if bad:
        shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        raise TaskError(f"{path}: {len(bad)} bad line(s) of {len(bad) + len(docs)}: {shown}")
    if not docs:
        raise TaskError(f"{path}: no documents")
    return docs


def _yaml_load(path: Path) -> dict:
    """lm-eval's `!function` tags are kept as plain strings: ilm reads the data itself."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
    except yaml.YAMLError as err:
        raise TaskError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise TaskError(f"{path}: a task YAML must be a mapping")
    for inc in ([cfg.pop("include")] if "include" in cfg else []):
        base = _yaml_load(path.parent / inc)
        base.update(cfg)
        cfg = base
    return cfg


def task_from_yaml(path: Path) -> Task:
    cfg = _yaml_load(path)
    name = cfg.get("task") or path.stem
    kind = cfg.get("output_type", "generate_until")
    if kind not in KINDS:
        raise TaskError(f"{path}: output_type {kind!r} is not one of {', '.join(KINDS)}")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if cfg.get("dataset_path") != "json" or not isinstance(files, dict):
        raise TaskError(f"{path}: ilm reads local data only: set dataset_path: json and dataset_kwargs.data_files "
                        "as a mapping split -> jsonl file (relative to the YAML)")
    splits = {split: (path.parent / f).resolve() for split, f in files.items()}
    for split, p in splits.items():
        if not p.is_file():
            raise TaskError(f"{path}: data file of split {split!r} not found: {p}")
    test = cfg.get("test_split") or cfg.get("validation_split")
    if test not in splits:
        raise TaskError(f"{path}: test_split {test!r} is not in data_files ({', '.join(splits)})")
    fewshot = cfg.get("fewshot_split") or cfg.get("training_split") or cfg.get("validation_split")
    gen = cfg.get("generation_kwargs") or {}
    until = gen.get("until", ["\n\n", "Question:"])
    meta = cfg.get("metadata") or {}
    return Task(
        name=name, kind=kind, source=path, splits=splits, test_split=test,
        fewshot_split=fewshot if fewshot in splits else None,
        doc_to_text=cfg.get("doc_to_text", "question"), doc_to_target=cfg.get("doc_to_target", "answer"),
        doc_to_choice=cfg.get("doc_to_choice"), description=cfg.get("description") or "",
        target_delimiter=cfg.get("target_delimiter", " "), fewshot_delimiter=cfg.get("fewshot_delimiter", "\n\n"),
        num_fewshot=int(cfg.get("num_fewshot") or 0),
        sampler=(cfg.get("fewshot_config") or {}).get("sampler", "default"),
        until=[until] if isinstance(until, str) else list(until), max_gen_toks=int(gen.get("max_gen_toks", 256)),
        opencompass=str(meta.get("opencompass") or opencompass_name(name)),
    )


def task_from_jsonl(path: Path) -> Task:
    """A bare jsonl file: the kind from the first line's fields; MMLU-style letter answers accepted."""
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        doc = json.loads(first)
    except json.JSONDecodeError:
        raise TaskError(f"{path}: line 1: not JSON") from None
    if not isinstance(doc, dict):
        raise TaskError(f"{path}: line 1: not a JSON object")
    name = path.stem
    splits = {"test": path.resolve()}
    dev = path.with_name(path.stem + ".dev.jsonl")
    if dev.is_file():
        splits["dev"] = dev.resolve()
    common = {"name": name, "source": path, "splits": splits, "fewshot_split": "dev" if "dev" in splits else None,
                  "opencompass": opencompass_name(name)}
    if "text" in doc and "question" not in doc:
        return Task(kind="loglikelihood_rolling", doc_to_text="", doc_to_target="text", **common)
    if "choices" in doc:  # MMLU: question, choices, answer (index or letter)
        letters = "ABCDEFGHIJ"[: len(doc["choices"])]
        text = "{{question.strip()}}\n" + "".join(f"{c}. {{{{choices[{i}]}}}}\n" for i, c in enumerate(letters)) + "Answer:"
        target = f"{{{{answer if answer is number else '{letters}'.index(answer)}}}}"
        return Task(kind="multiple_choice", doc_to_text=text, doc_to_target=target, doc_to_choice=list(letters), **common)
    if all(k in doc for k in "ABCD") and "question" in doc:  # C-Eval: question, A..D, answer letter
        text = "{{question.strip()}}\n" + "".join(f"{c}. {{{{{c}}}}}\n" for c in "ABCD") + "答案："
        return Task(kind="multiple_choice", doc_to_text=text, doc_to_target="{{'ABCD'.index(answer)}}",
                    doc_to_choice=list("ABCD"), target_delimiter=" ", **common)
    if "question" in doc:  # GSM8K: question, answer ending in "#### N"
        return Task(kind="generate_until", doc_to_text="Question: {{question}}\nAnswer:", doc_to_target="{{answer}}",
                    **common)
    raise TaskError(f"{path}: line 1 has none of the fields of a known task kind "
                    "(text | question+choices+answer | question+A..D+answer | question+answer)")


def opencompass_name(name: str) -> str:
    if name in OPENCOMPASS_NAMES:
        return OPENCOMPASS_NAMES[name]
    for ours, theirs in OPENCOMPASS_PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name


def shipped() -> dict[str, Path]:
    """The tasks that ship with ilm: name -> YAML file."""
    out = {}
    for p in sorted(SHIPPED.glob("*.yaml")):
        out[_yaml_load(p).get("task", p.stem)] = p
    return out


def load_task(spec: str) -> Task:
    """A shipped task's name, a task YAML or a jsonl file."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return task_from_yaml(path)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return task_from_jsonl(path)
    tasks = shipped()
    if spec not in tasks:
        raise TaskError(f"unknown task {spec!r}: give a .yaml or .jsonl file or one of: {', '.join(tasks)}")
    return task_from_yaml(tasks[spec])
