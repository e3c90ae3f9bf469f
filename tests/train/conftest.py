"""A small real corpus, tokenizer and token shards, built once per test session."""

import json
import random
import sysconfig
from pathlib import Path

import pytest
import torch


def _stdlib_docs(n: int, seed: int = 0) -> list[str]:
    """Docstrings and code from Python's own standard library: real text that ships with Python."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py"))
    rng = random.Random(seed)
    rng.shuffle(files)
    docs = []
    for p in files:
        text = p.read_text(errors="replace")
        for chunk in text.split("\n\n\n"):
            chunk = chunk.strip()
            if 200 <= len(chunk) <= 4000:
                docs.append(chunk)
            if len(docs) >= n:
                return docs
    return docs


def write_jsonl(path: Path, texts: list[str], **meta) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps({"id": f"{path.stem}-{i}", "text": t, "metadata": meta}) + "\n" for i, t in enumerate(texts))
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from ilm.data.shards import tokenize_to_shards
    from ilm.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("pretrain")
    docs = _stdlib_docs(700)
    train_docs, held = docs[:600], docs[600:]
    text_file = root / "train.txt"
    text_file.write_text("\n".join(d.replace("\n", " ") for d in train_docs))
    tok = train_tokenizer([text_file], root / "tokenizer", vocab_size=512)
    write_jsonl(root / "raw/a/part0.jsonl", train_docs[:300])
    write_jsonl(root / "raw/a/part1.jsonl", train_docs[300:450])
    write_jsonl(root / "raw/b/part0.jsonl", train_docs[450:])
    write_jsonl(root / "raw/held/part0.jsonl", held)
    for name in ("a", "b", "held"):
        tokenize_to_shards([root / "raw" / name], root / "tokenizer", root / "tokens" / name, workers=1)
    return {"root": root, "tokenizer": root / "tokenizer", "tok": tok, "docs": docs,
            "tokens": {n: root / "tokens" / n for n in ("a", "b", "held")}}


def tiny_recipe(corpus, run_dir, **train) -> dict:
    """A PretrainConfig dict for the test corpus: 3 stages, windows 32 / 64 / 64."""
    base_train = {"total_tokens": 512 * 60, "batch_tokens": 512, "micro_batch_rows": 4, "precision": "fp32",
                  "device": "cpu", "checkpoint_every": 10, "eval_every": 20, "eval_rows": 8,
                  "eval_source": str(corpus["tokens"]["held"]), "progress": False, "deterministic": True}
    base_train.update(train)
    return {
        "run_dir": str(run_dir),
        "tokenizer": str(corpus["tokenizer"]),
        "model": {"preset": "tiny", "overrides": {"vocab_size": 512, "rope_theta": 50000.0, "max_position_embeddings": 32}},
        "sources": [{"name": "a", "path": str(corpus["tokens"]["a"])}, {"name": "b", "path": str(corpus["tokens"]["b"])}],
        "stages": [
            {"name": "s1", "window": 32, "fraction": 0.9, "mixture": {"a": 0.7, "b": 0.3}},
            {"name": "s2", "window": 64, "fraction": 0.08, "rope_theta": 1000000.0, "max_position_embeddings": 64,
             "mixture": {"a": 0.5, "b": 0.5}},
            {"name": "s3", "window": 64, "fraction": 0.02, "mixture": {"b": 1.0}},
        ],
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "train": base_train,
    }


def write_recipe(path: Path, recipe: dict) -> Path:
    """Recipe dict -> TOML file (the subset of TOML the recipes use)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(v)

    lines = []
    for k, v in recipe.items():
        if not isinstance(v, (dict, list)):
            lines.append(f"{k} = {value(v)}")
    for k, v in recipe.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines.extend(f"{a} = {value(b)}" for a, b in v.items())
        elif isinstance(v, list):
            for item in v:
                lines.append(f"[[{k}]]")
                lines.extend(f"{a} = {value(b)}" for a, b in item.items())
    path.write_text("\n".join(lines) + "\n")
    return path


class _Helpers:
    write_jsonl = staticmethod(write_jsonl)
    rlhf_setup = staticmethod(lambda *a, **k: rlhf_setup(*a, **k))
    rlhf_recipe = staticmethod(lambda *a, **k: rlhf_recipe(*a, **k))
    tiny_recipe = staticmethod(tiny_recipe)
    write_recipe = staticmethod(write_recipe)


@pytest.fixture
def helpers():
    """Test modules are imported by file path (importlib mode), so they reach these through a fixture."""
    return _Helpers


def rlhf_setup(corpus, root: Path, n_queries: int = 24, seed: int = 0, pretrain_steps: int = 60) -> dict:
    """A tiny actor (HF checkpoint + tokenizer), a reward-model export on the same tokenizer, and a query
    file, for the online-RLHF tests. The actor is pretrained for a few dozen steps on the corpus (so that
    its held-out loss has something to lose); the reward model is random (its scores still give PPO a
    signal to climb). Seconds on CPU."""
    import torch

    from ilm.data.packing import Packer, packed_labels
    from ilm.data.shards import TokenShards
    from ilm.model import build_model, get_preset, packed_batch, positions_from_doc_ids
    from ilm.model.hf import save_checkpoint
    from ilm.train.reward_model import REWARD_TOKEN, RewardModel, save_reward_model

    tok_dir = Path(corpus["tokenizer"])
    tok = corpus["tok"]
    extras = {p.name: p.read_bytes() for p in tok_dir.iterdir() if p.is_file()}
    cfg = get_preset("tiny", vocab_size=512, max_position_embeddings=256)
    actor = build_model(cfg, seed=seed)
    packer = Packer({"a": TokenShards(corpus["tokens"]["a"])}, {"a": 1.0}, window=32, seed=seed)
    opt = torch.optim.AdamW(actor.parameters(), lr=3e-3)
    for _ in range(pretrain_steps):
        ids, doc = packer.next_batch(8)
        loss = actor(ids, positions_from_doc_ids(doc), packed_batch(doc), labels=packed_labels(ids, doc))
        loss.backward()
        opt.step()
        opt.zero_grad()
    save_checkpoint(actor, root / "actor", extra_files=extras)
    rm = RewardModel(build_model(cfg, seed=seed + 1), seed=seed + 2)
    with torch.no_grad():
        rm.v_head.weight.mul_(4.0)  # rewards spread enough to learn from in a few updates
    conditions = {"default": "Be helpful.", "math": "Judge the arithmetic.", "chat": "Judge the conversation."}
    meta = {"reward_token": REWARD_TOKEN, "reward_token_id": tok.control_ids[REWARD_TOKEN], "conditions": conditions,
            "default_domain": "default", "max_length": 256}
    save_reward_model(rm, root / "rm", meta, tok_dir)
    rng = random.Random(seed)
    words = ["apple", "river", "stone", "cloud", "seven", "green", "light", "table", "music", "north"]
    queries = [{"messages": [{"role": "user", "content": " ".join(rng.sample(words, 3))}],
                "category": ["math", "chat"][i % 2]} for i in range(n_queries)]
    path = root / "queries.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in queries))
    return {"actor": root / "actor", "rm": root / "rm", "queries": path, "tokenizer": tok_dir, "tok": tok}


def rlhf_recipe(setup: dict, corpus, run_dir: Path, **ppo) -> dict:
    """A PPOConfig dict for the tiny setup: 4 queries per update, 12 new tokens, 2 mini-batches."""
    p = {"rollout_batch": 4, "generation_batch": 2, "max_new_tokens": 12, "mini_batches": 2, "micro_batch_rows": 2,
         "ppo_epochs": 1, "critic_warmup_updates": 1, "ptx_rows": 2, "ptx_window": 32, **ppo}
    return {"run_dir": str(run_dir), "tokenizer": str(setup["tokenizer"]), "actor": str(setup["actor"]),
            "reward_model": str(setup["rm"]),
            "data": {"queries": [str(setup["queries"])], "ptx": [str(corpus["tokens"]["a"])],
                     "ptx_eval": str(corpus["tokens"]["held"]), "max_query_tokens": 64},
            "ppo": p, "optim": {"actor_lr": 1e-3, "critic_lr": 1e-3},
            "train": {"updates": 3, "precision": "fp32", "device": "cpu", "deterministic": True,
                      "checkpoint_every": 1, "progress": False}}


@pytest.fixture(scope="session")
def rlhf(corpus, tmp_path_factory):
    """`rlhf_setup` built once per session (actor, reward model, queries)."""
    return rlhf_setup(corpus, tmp_path_factory.mktemp("rlhf"))


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: one intra-op thread is ~10x faster than several contending ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
