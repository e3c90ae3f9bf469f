"""The conditional reward model: two opposite conditions learned by one set of weights, the penalty keeping
rewards inside (-5, 5), token-budget batches, bad input, the reward token, export, scoring, resume, recipes."""

import json
import random
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from ilm.cli import main
from ilm.config import from_dict, load
from ilm.model import build_model, get_preset, packed_batch, positions_from_doc_ids
from ilm.train.distributed import World
from ilm.train.optim import lr_at
from ilm.train.reward import (
    RMConfig,
    RMData,
    collate_pairs,
    demo_pairs,
    encode_pairs,
    evaluate,
    token_budget_batches,
    train,
)
from ilm.train.reward_model import REWARD_TOKEN, RewardModel, load_reward_model
from ilm.train.sft import write_jsonl

REPO = Path(__file__).resolve().parents[2]
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]
CONDITIONS = {"default": "Be helpful.", "concise": "Answer as briefly as possible.",
              "detailed": "Answer in as much detail as possible."}


def two_condition_pairs(n_prompts: int, seed: int) -> list[dict]:
    """Each prompt twice with the same two answers: "concise" prefers the short one, "detailed" the long one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_prompts):
        prompt = "Tell me about " + " ".join(rng.sample(WORDS, 2))
        short = " ".join(rng.choices(WORDS, k=rng.randint(2, 5)))
        long = " ".join(rng.choices(WORDS, k=rng.randint(12, 20)))
        out.append({"prompt": prompt, "chosen": short, "rejected": long, "domain": "concise"})
        out.append({"prompt": prompt, "chosen": long, "rejected": short, "domain": "detailed"})
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ilm.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("rm")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (root / "text.txt").write_text("\n".join(p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py"))[:30]))
    tok = train_tokenizer([root / "text.txt"], root / "tok", vocab_size=512)
    write_jsonl(root / "train.jsonl", two_condition_pairs(160, seed=0))
    write_jsonl(root / "eval.jsonl", two_condition_pairs(50, seed=1))  # unseen prompts and answers
    return {"root": root, "tok": tok}


def rm_recipe(setup, run_dir: Path, penalty_weight: float = 0.02, **train_over) -> dict:
    root = setup["root"]
    t = {"batch_tokens": 2048, "epochs": 2, "precision": "fp32", "device": "cpu", "progress": False,
         "eval_every": 1000, "checkpoint_every": 1000, "deterministic": True, **train_over}
    return {"run_dir": str(run_dir), "tokenizer": str(root / "tok"),
            "model": {"preset": "tiny", "overrides": {"vocab_size": 512, "max_position_embeddings": 256}},
            "data": {"train": [str(root / "train.jsonl")], "eval": [str(root / "eval.jsonl")], "max_length": 256,
                     "conditions": CONDITIONS},
            "loss": {"penalty_weight": penalty_weight},
            "optim": {"lr": 3e-3, "warmup_steps": 5, "final_lr_fraction": 0.1}, "train": t}


@pytest.fixture(scope="module")
def trained(setup):
    cfg = from_dict(RMConfig, rm_recipe(setup, setup["root"] / "run"))
    return cfg, train(cfg, resume="never")


def _all_rewards(cfg: RMConfig, export: str) -> np.ndarray:
    """Rewards of every train and held-out sequence from the exported model."""
    model, meta = load_reward_model(export)
    tok = __import__("ilm.tokenizer", fromlist=["load_tokenizer"]).load_tokenizer(export)
    pairs = []
    for path in cfg.data.train + cfg.data.eval:
        pairs += encode_pairs([path], tok, cfg.data, meta["reward_token_id"])[0]
    world = World(0, 1, 0, torch.device("cpu"))
    ev = evaluate(model, pairs, 2048, world, lambda: torch.autocast("cpu", enabled=False))
    return np.array([ev["reward_min"], ev["reward_max"]])


def test_one_model_learns_two_opposite_conditions(trained):
    _, summary = trained
    acc = summary["accuracy_by_domain"]
    print(f"held-out accuracy by condition: {acc}")
    assert summary["eval"]["pairs_by_domain"] == {"concise": 50, "detailed": 50}
    assert acc["concise"] >= 0.9 and acc["detailed"] >= 0.9  # the same weights, opposite preferences
    assert summary["data"]["dropped"] == {"invalid_json": 0, "bad_record": 0, "identical": 0, "empty_response": 0,
                                          "too_long": 0}
    assert Path(summary["eval"]["histogram"]).stat().st_size > 0 and Path(summary["plot"]).exists()


def test_penalty_keeps_rewards_inside_five(trained, setup):
    cfg, summary = trained
    lo, hi = _all_rewards(cfg, summary["export"])
    free = train(from_dict(RMConfig, rm_recipe(setup, setup["root"] / "free", penalty_weight=0.0)), resume="never")
    free_lo, free_hi = _all_rewards(cfg, free["export"])
    print(f"rewards with lambda=0.02: [{lo:.2f}, {hi:.2f}]; with lambda=0: [{free_lo:.2f}, {free_hi:.2f}]")
    assert -5 < lo and hi < 5
    assert free_lo < -5 or free_hi > 5  # same data and steps without the barrier: rewards drift outside
    assert min(free["accuracy_by_domain"].values()) >= 0.9  # (the ranking itself is learned either way)


def test_token_budget_batches_full_and_never_split():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(600), 0.9, size=(3000, 2)).astype(int), 20, 8192)
    sizes = lengths.sum(1).tolist()
    batches = token_budget_batches(sizes, 16_384, seed=0)
    fills = np.array([sum(sizes[i] for i in b) for b in batches])
    print(f"{len(batches)} batches; fill min {fills.min()} mean {fills.mean():.0f} of 16384")
    assert fills.max() <= 16_384
    assert fills.mean() / 16_384 > 0.98 and np.sort(fills)[1] / 16_384 > 0.9  # close to the budget (one tail batch)
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))  # every pair once, whole
    # the collated row holds both sequences of every pair of the batch, chosen then rejected
    from ilm.train.reward import Pair

    pairs = [Pair(np.arange(a) % 50 + 3, np.arange(b) % 50 + 3, "d") for a, b in lengths[:200]]
    for b in token_budget_batches([p.tokens for p in pairs], 16_384, seed=1):
        row = collate_pairs([pairs[i] for i in b])
        assert row["ids"].shape[1] == sum(pairs[i].tokens for i in b) <= 16_384
        ends = row["reward_index"][:, 1].tolist()
        assert len(ends) == 2 * len(b)
        starts = [0] + [e + 1 for e in ends[:-1]]
        for k, i in enumerate(b):
            assert ends[2 * k] - starts[2 * k] + 1 == len(pairs[i].chosen)
            assert ends[2 * k + 1] - starts[2 * k + 1] + 1 == len(pairs[i].rejected)
    assert collate_pairs(pairs[:2], pad_to=4096)["ids"].shape == (1, 4096)


def test_bad_input_counted(setup, tmp_path):
    tok = setup["tok"]
    rid = tok.control_ids[REWARD_TOKEN]
    data = RMData(conditions=CONDITIONS, max_length=96)
    rows = [
        {"prompt": "q", "chosen": "a good answer", "rejected": "a bad answer", "domain": "concise"},
        {"prompt": "q", "chosen": "same", "rejected": "same", "domain": "concise"},  # identical
        {"prompt": "q", "chosen": "", "rejected": "x", "domain": "concise"},  # empty
        {"prompt": "q", "chosen": "x", "rejected": "   ", "domain": "concise"},  # empty
        {"prompt": "q", "chosen": [], "rejected": "x", "domain": "concise"},  # empty
        {"prompt": "q", "chosen": "kilo " * 80, "rejected": "x", "domain": "detailed"},  # response alone too long
        {"prefix": [{"role": "user", "content": "lima " * 80}], "chosen": "yes", "rejected": "no",
         "domain": "detailed"},  # long prefix: truncated from the left
        {"prompt": "q", "chosen": "a", "rejected": "b", "domain": "poetry"},  # unknown -> default condition
        {"prompt": "q", "chosen": "a", "rejected": "b"},  # missing -> default condition
        {"prompt": "q", "rejected": "b"},  # no chosen
        {"prefix": "not a list", "chosen": "a", "rejected": "b"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with open(path, "a") as f:
        f.write("{oops\n")
    pairs, report = encode_pairs([path], tok, data, rid)
    print(json.dumps({k: report[k] for k in ("pairs", "kept", "truncated", "dropped", "unknown_domains")}))
    assert report["pairs"] == 12 and report["kept"] == 4 and report["truncated"] == 1
    assert report["dropped"] == {"invalid_json": 1, "bad_record": 2, "identical": 1, "empty_response": 3,
                                 "too_long": 1}
    assert report["unknown_domain"] == 2 and report["unknown_domains"] == {"poetry": 1, "None": 1}
    assert report["by_domain"] == {"concise": 1, "detailed": 1, "default": 2}
    cut = pairs[1]
    assert len(cut.chosen) == 96 >= len(cut.rejected)
    text = tok.decode(cut.chosen.tolist())
    assert text.startswith("<s><|im_start|>system\n" + CONDITIONS["detailed"] + "<|im_end|>")  # condition kept
    assert text.endswith("<|im_start|>assistant\nyes<|im_end|>\n" + REWARD_TOKEN)  # response + reward token kept
    assert tok.decode(pairs[2].chosen.tolist()).startswith("<s><|im_start|>system\n" + CONDITIONS["default"])
    assert all(p.chosen[-1] == rid and p.rejected[-1] == rid for p in pairs)


def test_reward_read_at_reward_token_and_packing_is_exact(setup):
    tok = setup["tok"]
    rid = tok.control_ids[REWARD_TOKEN]
    path = setup["root"] / "train.jsonl"
    pairs = encode_pairs([path], tok, RMData(conditions=CONDITIONS, max_length=256), rid)[0][:6]
    model = RewardModel(build_model(get_preset("tiny", vocab_size=512, max_position_embeddings=256))).eval()
    b = collate_pairs(pairs)
    with torch.no_grad():
        packed = model(b["ids"], b["reward_index"], positions_from_doc_ids(b["doc_ids"]), packed_batch(b["doc_ids"]))
        alone = []
        for p in pairs:
            for seq in (p.chosen, p.rejected):
                ids = torch.from_numpy(seq)[None]
                hidden = model.backbone(ids, return_hidden=True)[0, -1]  # the last token: the reward token
                alone.append(model.v_head(hidden).item())
    torch.testing.assert_close(packed, torch.tensor(alone), atol=1e-5, rtol=1e-4)


def test_export_reloads_and_scores_from_the_cli(trained, tmp_path):
    _, summary = trained
    export = Path(summary["export"])
    meta = json.loads((export / "reward_config.json").read_text())
    assert meta["conditions"] == CONDITIONS and meta["reward_token"] == REWARD_TOKEN
    assert (export / "reward_head.safetensors").exists() and (export / "tokenizer.json").exists()
    convs = [{"messages": [{"role": "user", "content": "Tell me about golf kilo"},
                           {"role": "assistant", "content": answer}], "domain": domain}
             for domain in ("concise", "detailed") for answer in ("lima echo", " ".join(["papa romeo india"] * 5))]
    convs.append({"messages": convs[0]["messages"], "domain": "unknown-thing"})
    inp = write_jsonl(tmp_path / "convs.jsonl", convs)
    with open(inp, "a") as f:
        f.write("{not json\n")
    proc = subprocess.run([sys.executable, "-m", "ilm.cli", "rm", "score", "--model", str(export), str(inp),
                           "--out", str(tmp_path / "scored.jsonl")], capture_output=True, text=True, check=True)
    counts = json.loads(proc.stderr.strip().splitlines()[-1])
    assert counts["scored"] == 5 and counts["unknown_domain"] == 1
    assert counts["invalid_json"] == 1 and counts["bad_record"] == 0
    r = [json.loads(x)["reward"] for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(r) == 6 and r.pop() is None  # the unparsable line keeps its place, unscored
    assert r[0] > r[1] and r[3] > r[2]  # concise prefers the short answer, detailed the long one
    # the reloaded model gives the same rewards as the one in memory (through the score path)
    from ilm.tokenizer import load_tokenizer
    from ilm.train.reward import score

    model, meta = load_reward_model(export)
    again, _ = score(model, load_tokenizer(export), meta, convs)
    assert again == pytest.approx(r, abs=1e-5)


def test_resume_equals_uninterrupted(setup, tmp_path, helpers):
    base = rm_recipe(setup, tmp_path / "a", epochs=1, checkpoint_every=4, max_steps=10)
    straight = train(from_dict(RMConfig, base), resume="never")
    recipe = helpers.write_recipe(tmp_path / "rm.toml", {**base, "run_dir": str(tmp_path / "b")})
    assert main(["rm", "train", str(recipe), "--train.max_steps=6"]) == 0
    (tmp_path / "b" / "step-00000006").rename(tmp_path / "b" / "gone")  # killed after step 6: resume from step 4
    assert main(["rm", "train", str(recipe)]) == 0
    read = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert straight["steps"] == 10 and read(tmp_path / "b") == read(tmp_path / "a")
    assert main(["rm", "train", str(recipe), "--data.max_length=2000"]) == 2  # 2 x 2000 > batch_tokens: refused


def test_recipe_numbers():
    cfg = load(RMConfig, REPO / "recipes" / "rm-internlm2-7b.toml")
    assert cfg.train.batch_tokens == 16_384 and cfg.train.epochs == 1
    assert (cfg.loss.gamma, cfg.loss.penalty_weight, cfg.optim.weight_decay) == (2.0, 0.02, 0.01)
    assert lr_at(0, 5000, cfg.optim) == pytest.approx(1e-5) and lr_at(4999, 5000, cfg.optim) == pytest.approx(5e-6)
    assert set(cfg.data.conditions) >= {"default", "helpful", "harmless", "code", "math", "creative"}
    assert from_dict(RMConfig, {}).optim.lr == 1e-5  # the defaults are the recipe's too
    tiny = load(RMConfig, REPO / "recipes" / "rm-tiny.toml")
    assert 2 * tiny.data.max_length <= tiny.train.batch_tokens


def test_demo_pairs_from_real_material():
    import math

    rows = demo_pairs(n=60, seed=0)
    assert {r["domain"] for r in rows} == {"helpful", "code", "math"}
    assert all(r["chosen"] != r["rejected"] for r in rows)
    m = next(r for r in rows if r["domain"] == "math" and "math.gcd" in r["prompt"])
    a, b = map(int, m["prompt"].split("(")[1].split(")")[0].split(", "))
    assert m["chosen"].endswith(f"returns {math.gcd(a, b)}.")


def test_max_length_past_max_context_trains_when_memory_allows(setup, tmp_path, monkeypatch):
    """data.max_length 256 > max_position_embeddings 32: no constant cap, only the memory estimate."""
    from ilm.model import memory

    recipe = rm_recipe(setup, tmp_path / "long", max_steps=1)
    recipe["model"]["overrides"]["max_position_embeddings"] = 32
    summary = train(from_dict(RMConfig, recipe), resume="never")
    assert summary["steps"] == 1
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    recipe["run_dir"] = str(tmp_path / "refused")
    with pytest.raises(memory.ContextMemoryError, match=r"reward model training with batch_tokens 2,048 \(data.max_length "
                                                        r"256\) needs an estimated [\d.]+ GiB .* but only 0.00 GiB"):
        train(from_dict(RMConfig, recipe), resume="never")


def test_finished_run_has_nothing_to_do(trained, capfd):
    """`ilm rm train` on a finished run: one line says so; no re-export, summary.json keeps its eval keys."""
    cfg, first = trained
    run_dir = Path(cfg.run_dir)
    summary, mtime = (run_dir / "summary.json").read_text(), (run_dir / "final" / "model.safetensors").stat().st_mtime_ns
    capfd.readouterr()
    again = train(cfg, resume="auto")
    assert "nothing to do" in capfd.readouterr().err
    assert (run_dir / "summary.json").read_text() == summary and "eval" in json.loads(summary)
    assert (run_dir / "final" / "model.safetensors").stat().st_mtime_ns == mtime
    assert again["steps"] == first["steps"] and again["eval"] == first["eval"]


def test_merge_init_counts_the_kept_init_weights_in_the_memory_check(setup, tmp_path, monkeypatch):
    """WiSE-FT (merge_init < 1) keeps an fp32 copy of the init weights for the export's average: the start-up check
    counts it (4 bytes per parameter more), and refuses when only that copy does not fit."""
    from ilm.model import memory
    from ilm.train import reward

    real = memory.check_training
    seen = []

    def spy(config, *a, **k):
        est = real(config, *a, **k)
        seen.append((config.num_params(), est))
        return est

    monkeypatch.setattr(reward, "check_training", spy)
    recipe = rm_recipe(setup, tmp_path / "plain", max_steps=1)
    train(from_dict(RMConfig, recipe), resume="never")
    recipe["run_dir"], recipe["train"]["merge_init"] = str(tmp_path / "merged"), 0.5
    train(from_dict(RMConfig, recipe), resume="never")
    (n, plain), (_, merged) = seen
    assert merged.weights - plain.weights == 4 * n and merged.total - plain.total == 4 * n
    monkeypatch.setattr(reward, "check_training", real)
    monkeypatch.setattr(memory, "available_bytes", lambda device: plain.needed + 2 * n)  # room for all but the copy
    recipe["run_dir"] = str(tmp_path / "refused")
    with pytest.raises(memory.ContextMemoryError, match="reward model training"):
        train(from_dict(RMConfig, recipe), resume="never")
    recipe["run_dir"], recipe["train"]["merge_init"] = str(tmp_path / "fits"), 1.0
    assert train(from_dict(RMConfig, recipe), resume="never")["steps"] == 1
