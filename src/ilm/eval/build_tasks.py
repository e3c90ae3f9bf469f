"""Rebuild the shipped task files from real material on the machine: `python -m ilm.eval.build_tasks [DIR]`.

The outputs are committed under `ilm/eval/tasks/` (nothing is generated at evaluation time, so every
machine scores the same documents); this module says where each came from and regenerates them
deterministically:

- `stdlib_mc.{dev,test}.jsonl` (MMLU format): "which standard-library module is described as <the first sentence
  of its docstring>", four real module names as choices (three distractors drawn with a fixed seed).
- `stdlib_arith.{train,test}.jsonl` (GSM8K format): two-step arithmetic over real numbers of the standard
  library (HTTP status codes from `http.HTTPStatus`, sizes of `string` constants), solutions in GSM8K's
  `<<a+b=c>>` style ending in `#### N`.
- `license_ppl.test.jsonl`: the Apache License 2.0 text (Debian's /usr/share/common-licenses), one document
  per section: held-out prose for perplexity (the demo trains on Python's docs and docstrings, not on it).
"""

from __future__ import annotations

import ast
import http
import itertools
import json
import random
import re
import string
import sys
import sysconfig
import textwrap
from pathlib import Path

OUT = Path(__file__).resolve().parent / "tasks"
LICENSE = Path("/usr/share/common-licenses/Apache-2.0")


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def module_descriptions() -> list[tuple[str, str]]:
    """(module, first docstring sentence) for top-level stdlib modules whose line does not give the name away."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(stdlib.glob("*.py")):
        name = path.stem
        if name.startswith("_") or name in ("this", "antigravity", "__phello__"):
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError):
            continue
        para = " ".join((doc or "").strip().split("\n\n")[0].split())
        line = re.split(r"(?<=[.!?])\s", para)[0] if para else ""
        if len(line) < 20 or len(line) > 160 or name.lower() in line.lower():
            continue
        out.append((name, line.rstrip(".") + "."))
    return out


def stdlib_mc(n_dev: int = 5, n_test: int = 40, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    items = module_descriptions()
    rng.shuffle(items)
    names = sorted(n for n, _ in items)
    rows = []
    for name, line in items[: n_dev + n_test]:
        distractors = rng.sample([n for n in names if n != name], 3)
        choices = distractors[:]
        answer = rng.randrange(4)
        choices.insert(answer, name)
        rows.append({"question": f"Which Python standard-library module is described as: \"{line}\"",
                     "choices": choices, "answer": answer, "subject": "python_stdlib"})
    return rows[:n_dev], rows[n_dev:]


def stdlib_arith(n_train: int = 8, n_test: int = 30, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    codes = [(s.phrase, s.value) for s in http.HTTPStatus]
    consts = [(name, len(getattr(string, name))) for name in
              ("ascii_letters", "ascii_lowercase", "digits", "hexdigits", "octdigits", "punctuation", "whitespace")]
    rows = []
    for i in range(n_train + n_test):
        kind = i % 3
        if kind == 0:
            (p1, a), (p2, b) = rng.sample(codes, 2)
            q = (f"A web server answered one request with status \"{p1}\" (code {a}) and another with \"{p2}\" "
                 f"(code {b}). What is the sum of the two status codes?")
            r = a + b
            sol = f"The two codes add up to {a} + {b} = <<{a}+{b}={r}>>{r}.\n#### {r}"
        elif kind == 1:
            (p1, a), (p2, b) = sorted(rng.sample(codes, 2), key=lambda x: -x[1])
            q = (f"The HTTP status \"{p1}\" has code {a} and \"{p2}\" has code {b}. "
                 f"How much larger is the first code than the second?")
            r = a - b
            sol = f"The difference is {a} - {b} = <<{a}-{b}={r}>>{r}.\n#### {r}"
        else:
            (n1, a), (n2, b) = rng.sample(consts, 2)
            k = rng.randint(2, 9)
            r = k * a + b
            q = (f"In Python, string.{n1} holds {a} characters and string.{n2} holds {b}. A password alphabet "
                 f"repeats string.{n1} {k} times and then appends string.{n2} once. How many characters long is it?")
            sol = (f"The repeats give {k} * {a} = <<{k}*{a}={k * a}>>{k * a} characters. Adding {b} more gives "
                   f"{k * a} + {b} = <<{k * a}+{b}={r}>>{r}.\n#### {r}")
        rows.append({"question": q, "answer": sol})
    return rows[:n_train], rows[n_train:]


def license_sections(path: Path = LICENSE) -> list[dict]:
    """The license split at its numbered sections (plus the preamble and the appendix)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    starts = [0] + [i for i, ln in enumerate(lines) if re.match(r"   \d+\. ", ln) or ln.strip().startswith("APPENDIX")]
    starts = sorted(set(starts)) + [len(lines)]
    docs = []
    for a, b in itertools.pairwise(starts):
        text = textwrap.dedent("\n".join(lines[a:b])).strip()
        if text:
            docs.append({"text": text, "source": f"{path.name} lines {a + 1}-{b}"})
    return docs


def main(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dev, test = stdlib_mc()
    _write(out / "stdlib_mc.dev.jsonl", dev)
    _write(out / "stdlib_mc.test.jsonl", test)
    train, test = stdlib_arith()
    _write(out / "stdlib_arith.train.jsonl", train)
    _write(out / "stdlib_arith.test.jsonl", test)
    _write(out / "license_ppl.test.jsonl", license_sections())
    print(f"wrote the task files under {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
