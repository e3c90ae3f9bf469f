"""A user's ordinary mistakes give one line on stderr and a non-zero exit, never a traceback (issue 10, item 7).

Every command is run in a fresh directory with each kind of mistake: a missing file, a directory where a file
is expected, a missing tokenizer, a run directory without a ledger, a missing checkpoint. Each fails at once."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
R = REPO / "recipes"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A directory with a tiny trained tokenizer, an empty folder, a jsonl and a conversation file."""
    root = tmp_path_factory.mktemp("mistakes")
    text = "\n".join(p.read_text() for p in sorted(Path(os.__file__).parent.glob("json/*.py")))
    (root / "corpus.txt").write_text(text)
    subprocess.run([sys.executable, "-m", "ilm.cli", "tokenizer", "train", "corpus.txt", "--out", "tok",
                    "--vocab-size", "512"], cwd=root, check=True, capture_output=True)
    (root / "empty").mkdir()
    (root / "docs.jsonl").write_text('{"text": "hello"}\n')
    (root / "conv.json").write_text('[{"role": "user", "content": "hi"}]')
    (root / "conv.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                     '{"role": "assistant", "content": "hello there"}]}\n')
    (root / "notjson.toml").write_text("this is = = not toml\n")
    return root


CASES = {
    # ilm data run / report
    "data run: missing input": ["data", "run", f"{R}/data/minhash-only.toml", "-i", "nope.jsonl", "-o", "out"],
    "data run: recipe is a directory": ["data", "run", "empty", "-i", "docs.jsonl", "-o", "out"],
    "data run: missing recipe": ["data", "run", "nope.toml", "-i", "docs.jsonl", "-o", "out"],
    "data run: output is a file": ["data", "run", f"{R}/data/minhash-only.toml", "-i", "docs.jsonl", "-o", "docs.jsonl"],
    "data report: no ledger": ["data", "report", "empty"],
    "data report: missing dir": ["data", "report", "nope"],
    # ilm tokenizer
    "tokenizer encode: missing tokenizer": ["tokenizer", "encode", "--tokenizer", "nope", "hello"],
    "tokenizer encode: empty dir as tokenizer": ["tokenizer", "encode", "--tokenizer", "empty", "hello"],
    "tokenizer render: missing conversation": ["tokenizer", "render", "--tokenizer", "tok", "nope.json"],
    "tokenizer render: missing tokenizer": ["tokenizer", "render", "--tokenizer", "nope", "conv.json"],
    "tokenizer build: missing base": ["tokenizer", "build", "--out", "built", "--base", "nope.tiktoken"],
    # ilm pretrain
    "pretrain: missing recipe": ["pretrain", "nope.toml"],
    "pretrain: recipe is a directory": ["pretrain", "empty"],
    "pretrain: recipe is not toml": ["pretrain", "notjson.toml"],
    "pretrain: missing token shards": ["pretrain", f"{R}/tiny.toml"],
    "pretrain tokenize: missing tokenizer": ["pretrain", "tokenize", "--tokenizer", "nope", "--out", "t", "docs.jsonl"],
    "pretrain tokenize: missing input": ["pretrain", "tokenize", "--tokenizer", "tok", "--out", "t", "nope.jsonl"],
    "pretrain tokenize: out is a file": ["pretrain", "tokenize", "--tokenizer", "tok", "--out", "docs.jsonl", "docs.jsonl"],
    # ilm sft / rm / rlhf
    "sft: recipe is a directory": ["sft", "empty"],
    "sft: missing tokenizer": ["sft", f"{R}/sft-tiny.toml"],
    "sft: missing data": ["sft", f"{R}/sft-tiny.toml", "--tokenizer=tok"],
    "sft: missing checkpoint": ["sft", f"{R}/sft-tiny.toml", "--tokenizer=tok", '--data.train=["conv.jsonl"]',
                                "--data.eval=[]"],
    "rm train: missing recipe": ["rm", "train", "nope.toml"],
    "rm train: missing tokenizer": ["rm", "train", f"{R}/rm-tiny.toml"],
    "rm train: missing data": ["rm", "train", f"{R}/rm-tiny.toml", "--tokenizer=tok"],
    "rm score: missing model": ["rm", "score", "--model", "nope", "docs.jsonl"],
    "rm score: directory as model": ["rm", "score", "--model", "empty", "docs.jsonl"],
    "rlhf ppo: recipe is a directory": ["rlhf", "ppo", "empty"],
    "rlhf ppo: missing checkpoints": ["rlhf", "ppo", f"{R}/rlhf-tiny.toml"],
    "rlhf run: missing recipe": ["rlhf", "run", "nope.toml"],
    "rlhf run: missing checkpoints": ["rlhf", "run", f"{R}/rlhf-rounds-tiny.toml"],
    # ilm model / generate
    "model convert: missing checkpoint": ["model", "convert", "nope", "converted", "--to", "llama"],
    "model convert: directory without config": ["model", "convert", "empty", "converted", "--to", "llama"],
    "generate: missing checkpoint": ["generate", "--checkpoint", "nope", "--prompt", "hi"],
    "generate: directory without config": ["generate", "--checkpoint", "empty", "--prompt", "hi"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_mistake_is_one_line(work, name):
    # the shipped recipes' runs/demo/... paths resolve inside `work`, never in the checkout (where, after
    # `make demo`, they exist: the command would then run and write into the demo's run)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ILM_BASE_DIR": str(work)}
    env.pop("ILM_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "ilm.cli", *CASES[name]], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(("error: ", "ilm ")), lines[0]


def test_debug_env_keeps_the_traceback(work):
    env = {**os.environ, "ILM_DEBUG": "1"}
    done = subprocess.run([sys.executable, "-m", "ilm.cli", "data", "report", "empty"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "Traceback" in done.stderr
