"""The demo's real material for SFT and the reward model: conversations and preference pairs built from
the Python standard library's own functions and docstrings (no downloads, deterministic for a seed).

Data only: the trainers (`ilm.train.sft`, `ilm.train.reward`) and their `demo` stages import from here.
"""

from __future__ import annotations

DEMO_MODULES = ("json", "textwrap", "string", "os.path", "shutil", "math", "statistics", "random", "itertools",
                "functools", "collections", "re", "fnmatch", "glob", "base64", "binascii", "bisect", "heapq",
                "copy", "difflib", "html", "urllib.parse", "zlib", "calendar", "colorsys", "keyword", "operator")

DOC_TOOL = {"type": "function", "function": {
    "name": "python_doc", "description": "Return the docstring of a Python standard-library function.",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}


def stdlib_functions(limit: int | None = None) -> list[dict[str, str]]:
    """Public standard-library functions with a docstring: name, signature, summary (first paragraph), doc.

    Real text that ships with Python, the same on every machine with the same Python; sorted, so stable.
    """
    import importlib
    import inspect

    found = []
    for module_name in DEMO_MODULES:
        module = importlib.import_module(module_name)
        for name, fn in sorted(vars(module).items()):
            if name.startswith("_") or not callable(fn) or inspect.isclass(fn):
                continue
            if getattr(fn, "__module__", None) not in (module.__name__, module_name, None) and not inspect.isbuiltin(fn):
                continue
            doc = inspect.getdoc(fn) or ""
            summary = " ".join(doc.split("\n\n")[0].split())
            if len(summary) < 20:
                continue
            try:
                sig = str(inspect.signature(fn))
            except (TypeError, ValueError):
                continue
            if " at 0x" in sig:  # a default whose repr is a memory address: differs run to run
                continue
            found.append({"name": f"{module_name}.{name}", "signature": f"{module_name}.{name}{sig}",
                          "summary": summary, "doc": doc[:1500]})
    return found[:limit] if limit else found


def demo_conversations(n: int = 400, seed: int = 0) -> list[dict]:
    """SFT conversations about standard-library functions: explain (answer = the docstring's summary),
    signature questions, and tool use (call `python_doc`, read its result, answer)."""
    import random

    fns = stdlib_functions()
    rng = random.Random(seed)
    system = {"role": "system", "content": "You are a helpful assistant for Python programmers."}
    out = []
    for i in range(n):
        f = fns[rng.randrange(len(fns))]
        kind = i % 3
        if kind == 0:
            msgs = [system, {"role": "user", "content": f"What does `{f['name']}` do?"},
                    {"role": "assistant", "content": f["summary"]}]
            out.append({"messages": msgs})
        elif kind == 1:
            msgs = [{"role": "user", "content": f"What is the signature of `{f['name']}`?"},
                    {"role": "assistant", "content": f"`{f['signature']}`"}]
            out.append({"messages": msgs})
        else:
            msgs = [system, {"role": "user", "content": f"Look up `{f['name']}` and summarise it."},
                    {"role": "assistant", "content": "",
                     "tool_calls": [{"type": "function", "function": {"name": "python_doc",
                                                                      "arguments": {"name": f["name"]}}}]},
                    {"role": "tool", "content": f["doc"]},
                    {"role": "assistant", "content": f["summary"]}]
            out.append({"messages": msgs, "tools": [DOC_TOOL]})
    return out


def demo_pairs(n: int = 600, seed: int = 0) -> list[dict]:
    """Preference pairs from the standard library, three domains:

    helpful: "what does f do?" -> f's docstring summary, against another function's summary or a truncated one;
    code:    "signature of f?" -> f's real signature, against another function's signature under f's name;
    math:    "what does math.gcd(a, b) return?" -> the value Python computes, against a nearby wrong value.
    """
    import math
    import random

    fns = stdlib_functions()
    rng = random.Random(seed)
    ops = [("math.gcd", math.gcd, 2), ("math.comb", math.comb, 2), ("math.isqrt", math.isqrt, 1),
           ("math.lcm", math.lcm, 2), ("math.factorial", math.factorial, 1), ("pow", pow, 2)]
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            f, g = rng.sample(fns, 2)
            words = f["summary"].split()
            bad = g["summary"] if rng.random() < 0.5 or len(words) < 6 else " ".join(words[: len(words) // 3]) + " ..."
            out.append({"prompt": f"What does `{f['name']}` do?", "chosen": f["summary"], "rejected": bad,
                        "domain": "helpful"})
        elif kind == 1:
            f, g = rng.sample(fns, 2)
            wrong = f["name"] + g["signature"][len(g["name"]):]
            if wrong == f["signature"]:
                continue
            out.append({"prompt": f"What is the signature of `{f['name']}`?", "chosen": f"`{f['signature']}`",
                        "rejected": f"`{wrong}`", "domain": "code"})
        else:
            name, fn, arity = rng.choice(ops)
            args = [rng.randint(2, 12) for _ in range(arity)]
            if name == "math.comb":
                args.sort(reverse=True)
            value = fn(*args)
            wrong = value + rng.choice([-2, -1, 1, 2, 10])
            call = f"{name}({', '.join(map(str, args))})"
            out.append({"prompt": f"What does `{call}` return?", "chosen": f"`{call}` returns {value}.",
                        "rejected": f"`{call}` returns {wrong}.", "domain": "math"})
    return out
