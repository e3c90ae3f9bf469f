"""Every command line of README's command blocks, in order, on a fresh directory with tiny inputs.

A README line is matched exactly to an entry of SPEC (so a changed or added README command fails here until
it is run here too), its placeholders are replaced with real tiny paths, and it is either

- run: executed as written (optional `[...]` parts included), from the fresh directory, and must exit 0;
  the recipes it names are the shipped ones copied into FRESH/recipes/ with their sizes shrunk (steps,
  updates) and nothing else changed, so the command line itself is what the user would type; or
- parsed: where running it needs what this machine lacks (torchrun over 8 GPUs, `make demo`'s whole recipe,
  the rounds' loophole task, a run waiting on review), every option the line uses must be one the command
  accepts (its `--help` lists it) and the recipe it names must load into its stage's config.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from importlib import import_module
from pathlib import Path

import pytest

from ilm.config import load

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
ILM = [sys.executable, "-m", "ilm.cli"]

# README line (comment stripped) -> (mode, [placeholder substitutions, one run per dict]).
# FRESH is the fresh directory; the shipped recipes under FRESH/recipes/ read `runs/demo/...` against FRESH.
SPEC: dict[str, tuple[str, list[dict[str, str]]]] = {
    "make demo": ("parse", [{}]),
    "make test": ("parse", [{}]),
    "ilm --help": ("run", [{}]),
    "ilm data run recipes/data/internlm2.toml -i INPUT... -o DIR": (
        "run", [{"INPUT...": "raw/docs.jsonl", "DIR": "data"}]),
    "ilm data longctx --repos DIR... --documents FILE... -o DIR": ("parse", [{}]),  # tests/data/test_longctx.py
    "ilm tokenizer build --out DIR [--vocab-size N]": (
        "run", [{"DIR": "runs/demo/tokenizer", "N": "2048"}]),
    "ilm tokenizer render --tokenizer DIR CONVERSATION.json": (
        "run", [{"DIR": "runs/demo/tokenizer", "CONVERSATION.json": "conversation.json"}]),
    "ilm pretrain tokenize --tokenizer DIR --out DIR INPUT...": (
        "run", [{"--tokenizer DIR": "--tokenizer runs/demo/tokenizer", "--out DIR": f"--out runs/demo/tokens/{name}",
                 "INPUT...": f"raw/{name}.jsonl"} for name in ("text", "code", "heldout")]),
    "ilm pretrain recipes/tiny.toml [--resume auto] [--train.max_steps=100]": ("run", [{}]),
    "torchrun --nproc_per_node 8 -m ilm.cli pretrain recipes/internlm2-7b.toml": ("parse", [{}]),
    "ilm model info --preset internlm2-7b --seq-len 4096": ("run", [{}]),
    "ilm model convert SRC DST --to llama": (
        "run", [{"SRC": "runs/demo/pretrain/final", "DST": "runs/demo/checkpoint-llama"}]),
    'ilm generate --checkpoint DIR --prompt "def main():" --max-new-tokens 32': (
        "run", [{"DIR": "runs/demo/pretrain/final"}]),
    "ilm eval run --checkpoint DIR --tasks ilm_stdlib_mc ilm_license_ppl --limit 8": (
        "run", [{"DIR": "runs/demo/checkpoint-llama"}]),
    # run in tests/eval (test_lm_eval_tasks: lm-eval's own configs on local files; test_humaneval: the jail)
    "ilm eval run --checkpoint DIR --tasks hellaswag --data hellaswag:validation=hs.jsonl": ("parse", [{}]),
    "ilm eval humaneval --checkpoint DIR --n 1 --k 1": ("parse", [{}]),
    "ilm eval niah --checkpoint DIR --lengths 128,256 --depths 0,0.5,1 --out DIR --compare-ntk": (
        "run", [{"--checkpoint DIR": "--checkpoint runs/demo/pretrain/final", "--out DIR": "--out runs/niah"}]),
    "ilm sft recipes/sft-tiny.toml": ("run", [{}]),
    "ilm chat --checkpoint DIR --tools builtin --interpreter": ("parse", [{}]),  # run in tests/agent/test_cli.py
    "ilm rm train recipes/rm-tiny.toml": ("run", [{}]),
    "ilm rlhf ppo recipes/rlhf-tiny.toml": ("run", [{}]),
    "ilm rlhf run recipes/rlhf-rounds-tiny.toml": ("parse", [{}]),
    "ilm rlhf review export RUN_DIR --round 1 -o todo.jsonl": ("parse", [{}]),
    "ilm rlhf review import RUN_DIR done.jsonl": ("parse", [{}]),
    "ilm serve --checkpoint DIR --port 8000 --api-key-file FILE": ("parse", [{}]),
    "ilm report RUN_DIR [--out FILE]": ("run", [{"RUN_DIR": "runs/demo", "FILE": "runs/demo/report.html"}]),
}

# Sizes shrunk in the copied recipes (key = value lines; every one must be found).
SHRINK = {
    "tiny.toml": {"total_tokens": "40960"},  # 20 steps: the run finishes (and exports) within max_steps=100
    "rlhf-tiny.toml": {"updates": "2", "critic_warmup_updates": "1", "rollout_batch": "4", "generation_batch": "4",
                       "max_new_tokens": "8"},
}
RECIPE_CONFIGS = {  # recipe -> the config class its command loads it into (parse mode)
    "internlm2-7b.toml": "ilm.train.pretrain:PretrainConfig",
    "rlhf-rounds-tiny.toml": "ilm.train.rlhf.rounds:RoundsConfig",
}


def readme_commands() -> list[str]:
    """Every line of README's ``` blocks under the intro and "## Command line", comments stripped."""
    text = README.read_text()
    out = []
    for block in re.findall(r"```\n(.*?)\n```", text, flags=re.DOTALL):
        for line in block.splitlines():
            cmd = re.sub(r"\s+#.*$", "", line).strip()
            if cmd and re.match(r"(ilm|make|torchrun)\b", cmd):
                out.append(cmd)
    return out


def expand(cmd: str, subs: dict[str, str]) -> list[str]:
    for old, new in subs.items():
        cmd = cmd.replace(old, new)
    cmd = re.sub(r"\[([^\]]*)\]", r"\1", cmd)  # optional parts are run too
    argv = shlex.split(cmd)
    return ILM + argv[1:] if argv[0] == "ilm" else argv


def _docs(n: int, offset: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for p in sorted(stdlib.glob("*.py"))[offset:]:
        t = p.read_text(errors="replace")
        texts += [t[i : i + 1500] for i in range(0, min(len(t), 6000), 1500)]
        if len(texts) >= n:
            return texts[:n]
    return texts


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_fresh(root: Path) -> Path:
    """The fresh directory: tiny inputs for every format and the shipped recipes, shrunk."""
    shutil.copytree(REPO / "recipes", root / "recipes")
    for name, keys in SHRINK.items():
        path = root / "recipes" / name
        text = path.read_text()
        for key, value in keys.items():
            text, n = re.subn(rf"(?m)^{key} = \S+", f"{key} = {value}", text)
            assert n == 1, (name, key)
        path.write_text(text)
    for name, (n, offset) in {"docs": (60, 0), "text": (120, 0), "code": (40, 60), "heldout": (20, 120)}.items():
        _jsonl(root / "raw" / f"{name}.jsonl", [{"id": f"{name}-{i}", "text": t} for i, t in enumerate(_docs(n, offset))])
    convs, pairs, queries = [], [], []
    for a in range(12):
        q = f"What is {a} + {a + 2}?"
        convs.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{a} + {a + 2} = {2 * a + 2}."}]})
        pairs.append({"prompt": q, "chosen": f"{2 * a + 2}.", "rejected": f"{2 * a + 3}.", "domain": "math"})
        queries.append({"messages": [{"role": "user", "content": q}], "category": "math"})
    (root / "conversation.json").write_text(json.dumps(convs[0]))
    _jsonl(root / "runs/demo/sft-data/train.jsonl", convs[:10])
    _jsonl(root / "runs/demo/sft-data/eval.jsonl", convs[10:])
    _jsonl(root / "runs/demo/rm-data/train.jsonl", pairs[:10])
    _jsonl(root / "runs/demo/rm-data/eval.jsonl", pairs[10:])
    _jsonl(root / "runs/demo/rlhf-data/queries.jsonl", queries)
    return root


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("ILM_BASE_DIR", None)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def _help_argv(argv: list[str]) -> list[str]:
    """The command's own --help: the words before the first option or path-like argument."""
    words = []
    for a in argv:
        if a.startswith("-") or "/" in a or a.isupper() or a.endswith((".toml", ".jsonl")):
            break
        words.append(a)
    return [*words, "--help"]


def check_parses(cmd: str, fresh: Path) -> None:
    argv = expand(cmd, {})
    if argv[0] == "make":
        done = _run(["make", "-n", "-C", str(REPO), argv[1]], fresh)
        assert done.returncode == 0, done.stderr
        return
    if argv[0] == "torchrun":
        tr = str(Path(sys.executable).with_name("torchrun"))
        help_text = _run([tr, "--help"], fresh).stdout
        for opt in [a for a in argv[1 : argv.index("-m")] if a.startswith("-")]:
            assert opt in help_text, f"torchrun has no {opt}"
        argv = ILM + argv[argv.index("ilm.cli") + 1 :]
    prefix = argv[: len(ILM)]
    rest = argv[len(ILM) :]
    help_argv = prefix + _help_argv(rest)
    done = _run(help_argv, fresh)
    assert done.returncode == 0, (help_argv, done.stderr)
    for opt in [a for a in rest if a.startswith("-")]:
        assert re.search(rf"(?<![\w-]){re.escape(opt.split('=')[0])}(?![\w-])", done.stdout), f"{cmd}: {opt} not in {help_argv}"
    for a in rest:
        if a.endswith(".toml"):
            module, _, cls = RECIPE_CONFIGS[Path(a).name].partition(":")
            load(getattr(import_module(module), cls), fresh / a)


def test_readme_lists_exactly_the_commands_tested_here():
    assert readme_commands() == list(SPEC), "README's commands changed: update SPEC (and run the new ones)"


def test_readme_commands_run_in_order_on_a_fresh_directory(tmp_path):
    fresh = make_fresh(tmp_path / "fresh")
    ran = []
    for cmd in readme_commands():
        mode, runs = SPEC[cmd]
        if mode == "parse":
            check_parses(cmd, fresh)
            continue
        for subs in runs:
            argv = expand(cmd, subs)
            done = _run(argv, fresh)
            assert done.returncode == 0, f"README command failed: {cmd}\n{shlex.join(argv)}\n{done.stderr[-3000:]}"
            ran.append(cmd)
    assert (fresh / "runs/demo/pretrain/final/config.json").exists()
    assert (fresh / "runs/demo/rlhf/final/actor").exists() and (fresh / "runs/demo/rm/final").exists()
    assert len(set(ran)) == sum(1 for m, _ in SPEC.values() if m == "run")
    diffs = exports_load_in_transformers_alone(fresh)  # README's promise: plain transformers loads every export
    assert all(d <= 1e-4 for d in diffs.values()), diffs


@pytest.mark.parametrize("bad", ["ilm data run recipes/data/internlm2.toml INPUT... --out DIR"])
def test_a_wrong_readme_command_fails_here(tmp_path, bad):
    """The old README's data line (`--out`, positional input) must not pass."""
    fresh = make_fresh(tmp_path / "fresh")
    done = _run(expand(bad, {"INPUT...": "raw/docs.jsonl", "DIR": "data"}), fresh)
    assert done.returncode != 0


_HF_ONLY = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
ids = torch.tensor(json.loads(sys.argv[1]))
out = {}
for name, path in json.loads(sys.argv[2]).items():
    if name == "rm":
        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True, dtype=torch.float32)
        out[name] = model(input_ids=ids).logits[:, 0].tolist()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32)
        out[name] = model(input_ids=ids).logits[0, -1].tolist()
assert not any(m == "ilm" or m.startswith("ilm.") for m in sys.modules), "ilm was imported"
print(json.dumps(out))
"""


def exports_load_in_transformers_alone(fresh: Path) -> dict[str, float]:
    """Each export the README's commands wrote, loaded by transformers in a process without `ilm`: the same
    logits (the reward model: the same score) as ilm's own loaders give; returns the max |diff| per export."""
    import torch

    from ilm.model.hf import load_checkpoint
    from ilm.train.reward_model import load_reward_model

    exports = {"pretrain": "runs/demo/pretrain/final", "llama": "runs/demo/checkpoint-llama",
               "sft": "runs/demo/sft/final", "rlhf-actor": "runs/demo/rlhf/final/actor", "rm": "runs/demo/rm/final"}
    exports = {k: str(fresh / v) for k, v in exports.items()}
    ids = [[1, 17, 42, 99, 7, 256, 3, 64]]
    ours = {}
    with torch.no_grad():
        for name, path in exports.items():
            if name == "rm":
                rm, _ = load_reward_model(path)
                ours[name] = rm(torch.tensor(ids), torch.tensor([[0, len(ids[0]) - 1]])).tolist()
            else:
                ours[name] = load_checkpoint(path, dtype=torch.float32)(torch.tensor(ids))[0, -1].tolist()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _HF_ONLY, json.dumps(ids), json.dumps(exports)], cwd=fresh, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: max(abs(a - b) for a, b in zip(ours[k], theirs[k])) for k in exports}
