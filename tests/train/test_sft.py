"""SFT: assistant-only loss masks (with tools), packing, bad input and truncation, resume, export, CLI, recipes."""

import inspect
import json
import math
import sysconfig
from pathlib import Path

import pytest
import torch

from ilm.cli import main
from ilm.config import from_dict, load
from ilm.model.hf import load_checkpoint
from ilm.train.demo_data import DOC_TOOL, demo_conversations
from ilm.train.losses import IGNORE_INDEX
from ilm.train.optim import lr_at
from ilm.train.sft import (
    SFTConfig,
    collate_rows,
    encode_conversations,
    pack_best_fit,
    plan_rows,
    train,
    write_jsonl,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from ilm.tokenizer import train_tokenizer

    root = Path(sysconfig.get_paths()["stdlib"])
    text = tmp_path_factory.mktemp("sfttok") / "text.txt"
    text.write_text("\n".join(p.read_text(errors="replace") for p in sorted(root.glob("*.py"))[:30]))
    return train_tokenizer([text], text.parent / "tok", vocab_size=512)


TOOL_CONV = {
    "messages": [
        {"role": "system", "content": "SYSTEMWORDS stay quiet"},
        {"role": "user", "content": "USERWORDS what is the weather"},
        {"role": "assistant", "content": "let me check",
         "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": {"ENVWORDS": "rain"}},
        {"role": "environment", "name": "interpreter", "content": "ENVWORDS two"},
        {"role": "assistant", "content": "It rains.", "tool_calls": [{"type": "interpreter", "code": "print(1)"}]},
        {"role": "user", "content": "USERWORDS thanks"},
        {"role": "assistant", "content": "You are welcome."},
    ],
    "tools": [{"type": "function", "function": {"name": "weather", "description": "TOOLDECL weather by city"}}],
}


def test_masks_train_only_assistant_tokens_with_tools(tok, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [TOOL_CONV, {"messages": [{"role": "user", "content": "hi"},
                                                                        {"role": "assistant", "content": "hello"}]}])
    convs, report = encode_conversations([path], tok, window=512)
    assert report["kept"] == 2
    b = collate_rows(convs, [[0, 1]], window=512, pad_id=tok.pad_id)  # both packed into one row
    ids, labels, doc = b["ids"][0], b["labels"][0], b["doc_ids"][0]
    trained = labels != IGNORE_INDEX
    # a label is set exactly where the next token is an assistant token of the same conversation
    mask = torch.cat([torch.from_numpy(c.mask) for c in convs]).bool()
    n = len(mask)
    want = torch.zeros(512, dtype=torch.bool)
    want[: n - 1] = mask[1:] & (doc[1:n] == doc[: n - 1])
    assert torch.equal(trained, want)
    assert torch.equal(labels[trained], ids[1:][trained[:-1]])
    targets = tok.decode(labels[trained].tolist())
    for never in ("SYSTEMWORDS", "USERWORDS", "ENVWORDS", "TOOLDECL", "system", "user", "environment"):
        assert never not in targets
    for trained_text in ("let me check", '"name": "weather"', '"city": "Oslo"', "It rains.", "print(1)",
                         "You are welcome.", "<|action_start|>", "<|action_end|>", "<|im_end|>", "hello"):
        assert trained_text in targets
    assert targets.count("<|im_end|>") == 4  # each assistant turn's own <|im_end|>, nobody else's
    assert not trained[n - 1 :].any()  # no loss on padding, nor from the last token into it
    # the loss the trainer computes is the cross-entropy over these targets only
    from ilm.model import build_model, get_preset, packed_batch, positions_from_doc_ids

    model = build_model(get_preset("tiny", vocab_size=512, max_position_embeddings=512))
    with torch.no_grad():
        fused = model(b["ids"], positions_from_doc_ids(b["doc_ids"]), packed_batch(b["doc_ids"]), labels=b["labels"])
        logits = model(b["ids"], positions_from_doc_ids(b["doc_ids"]), packed_batch(b["doc_ids"]))[0]
    manual = torch.nn.functional.cross_entropy(logits[want], ids[1:][want[:-1]])
    assert fused.item() == pytest.approx(manual.item(), rel=1e-5)


def test_bad_input_and_truncation_counted(tok, tmp_path):
    long_answer = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 400}]}
    late_answer = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "a"}]}
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"text": "no messages"},
        {"messages": []},
        long_answer, late_answer,
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with open(path, "a") as f:
        f.write("{not json\n")
    convs, report = encode_conversations([path], tok, window=128)
    assert report["conversations"] == 8 and report["kept"] == 2 and report["truncated"] == 1
    assert report["dropped"] == {"invalid_json": 1, "bad_messages": 3, "no_assistant_tokens": 1, "too_long": 1}
    assert max(len(c.ids) for c in convs) == 128 and all(c.mask.any() for c in convs)
    convs, report = encode_conversations([path], tok, window=128, truncation="drop")
    assert report["kept"] == 1 and report["truncated"] == 0 and report["dropped"]["too_long"] == 2
    with pytest.raises(ValueError, match="truncation"):
        encode_conversations([path], tok, window=128, truncation="left")


def test_packing_keeps_conversations_whole():
    import random

    rng = random.Random(0)
    sizes = [rng.randint(5, 300) for _ in range(500)]
    rows = pack_best_fit(sizes, 512)
    assert sorted(i for r in rows for i in r) == list(range(500))
    fills = [sum(sizes[i] for i in r) for r in rows]
    assert max(fills) <= 512 and sum(fills) / (512 * len(rows)) > 0.97
    assert plan_rows(sizes, 512, 2, seed=1) == plan_rows(sizes, 512, 2, seed=1) != plan_rows(sizes, 512, 2, seed=2)
    with pytest.raises(ValueError, match="capacity"):
        pack_best_fit([600], 512)


def test_demo_conversations_come_from_docstrings(tok):
    convs = demo_conversations(n=30, seed=0)
    explain = [c for c in convs if c["messages"][-2]["content"].startswith("What does")]
    name = explain[0]["messages"][-2]["content"].split("`")[1]
    module, _, attr = name.rpartition(".")
    fn = getattr(__import__(module, fromlist=[attr]), attr)
    assert explain[0]["messages"][-1]["content"] == " ".join(inspect.getdoc(fn).split("\n\n")[0].split())
    tools = [c for c in convs if c.get("tools")]
    assert tools and tools[0]["tools"] == [DOC_TOOL] and tools[0]["messages"][3]["role"] == "tool"
    assert all(sum(tok.render(c["messages"], c.get("tools")).mask) > 0 for c in convs)


def _recipe(tmp_path: Path, run_dir: Path, **train) -> dict:
    convs = demo_conversations(n=48, seed=1)
    write_jsonl(tmp_path / "train.jsonl", convs[:40])
    write_jsonl(tmp_path / "eval.jsonl", convs[40:])
    t = {"window": 256, "batch_rows": 2, "micro_batch_rows": 1, "epochs": 2, "precision": "fp32", "device": "cpu",
         "progress": False, "checkpoint_every": 3, "eval_every": 100, "deterministic": True, **train}
    return {"run_dir": str(run_dir), "tokenizer": str(tmp_path / "tok"),
            "model": {"preset": "tiny", "overrides": {"vocab_size": 512, "max_position_embeddings": 256}},
            "data": {"train": [str(tmp_path / "train.jsonl")], "eval": [str(tmp_path / "eval.jsonl")]},
            "optim": {"lr": 3e-3, "warmup_steps": 2}, "train": t}


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def test_train_resume_export_and_cli(tok, tmp_path, helpers, capfd):
    tok.save(tmp_path / "tok")
    straight = train(from_dict(SFTConfig, _recipe(tmp_path, tmp_path / "straight")), resume="never")
    assert straight["steps"] == straight["total_steps"] >= 10
    losses = _losses(tmp_path / "straight")
    assert losses[straight["steps"]] < losses[1] - 0.5  # it learns the assistant turns
    # interrupted after 4 steps (a checkpoint at step 3), then resumed: the same losses, step for step
    recipe = helpers.write_recipe(tmp_path / "r.toml", _recipe(tmp_path, tmp_path / "resumed"))
    assert main(["sft", str(recipe), "--train.max_steps=4"]) == 0
    (tmp_path / "resumed" / "step-00000004").rename(tmp_path / "resumed" / "gone")  # as if killed after step 4
    assert main(["sft", str(recipe)]) == 0
    assert _losses(tmp_path / "resumed") == losses
    # the export is an HF InternLM2 checkpoint with the tokenizer beside it
    model = load_checkpoint(straight["export"])
    assert (Path(straight["export"]) / "tokenizer.json").exists() and model.config.vocab_size == 512
    # generation stops at the end of a chat turn too, for transformers' generate and for ours
    from transformers import GenerationConfig

    stops = [tok.eos_id, tok.control_ids["<|im_end|>"]]
    written = json.loads((Path(straight["export"]) / "generation_config.json").read_text())["eos_token_id"]
    assert written == stops
    assert GenerationConfig.from_pretrained(straight["export"]).eos_token_id == stops
    assert list(model.config.stop_token_ids) == stops  # what `ilm generate --ids` stops at
    assert main(["sft", str(recipe), "--train.windw=3"]) == 2  # unknown keys are refused
    _finished_run_is_left_as_it_is(tmp_path, recipe, tmp_path / "resumed", capfd)


def _finished_run_is_left_as_it_is(tmp_path: Path, recipe: Path, run_dir: Path, capfd) -> None:
    """A finished run started again: nothing to do (no re-export, summary kept); started on other data:
    refused with its config.toml untouched; a training checkpoint as `init`: refused, naming the export."""
    export = run_dir / "final" / "model.safetensors"
    summary, config, mtime = (run_dir / "summary.json").read_text(), (run_dir / "config.toml").read_bytes(), \
        export.stat().st_mtime_ns
    capfd.readouterr()
    assert main(["sft", str(recipe)]) == 0
    assert "nothing to do" in capfd.readouterr().err
    assert export.stat().st_mtime_ns == mtime and (run_dir / "summary.json").read_text() == summary
    assert main(["sft", str(recipe), f"--data.train=[{json.dumps(str(tmp_path / 'eval.jsonl'))}]"]) == 2
    assert "planned on other data" in capfd.readouterr().err
    assert (run_dir / "config.toml").read_bytes() == config
    step = max(run_dir.glob("step-*"))
    assert main(["sft", str(recipe), f"--init={step}", f"--run_dir={tmp_path / 'from-step'}"]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pass {run_dir / 'final'}" in err and "training checkpoint" in err


def test_recipes():
    cfg = load(SFTConfig, REPO / "recipes" / "sft-internlm2-7b.toml")
    assert cfg.optim.lr == 4e-5 and cfg.train.epochs == 1  # docs/recipe.md, SFT
    default = from_dict(SFTConfig, {})
    assert default.optim.lr == 4e-5 and default.train.epochs == 1 and default.optim.final_lr_fraction < 1
    assert lr_at(0, 1000, cfg.optim) < lr_at(99, 1000, cfg.optim) == pytest.approx(4e-5)  # warm-up, then cosine
    assert lr_at(999, 1000, cfg.optim) == pytest.approx(4e-6)
    tiny = load(SFTConfig, REPO / "recipes" / "sft-tiny.toml")
    assert tiny.train.window == 256 and tiny.init.endswith("pretrain/final")


def test_demo_data_is_the_same_in_every_process():
    """No memory addresses or hash-order leaks into the demo data: two interpreters with different hash
    seeds build byte-identical conversations and preference pairs."""
    import os
    import subprocess
    import sys

    code = ("import hashlib, json; from ilm.train.demo_data import demo_conversations, demo_pairs; "
            "print(hashlib.sha256(json.dumps([demo_conversations(300), demo_pairs(300)]).encode()).hexdigest())")
    digests = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1


def test_window_past_max_context_trains_when_memory_allows(tok, tmp_path, monkeypatch):
    """train.window 256 > max_position_embeddings 64 x factor 2: no constant cap, only the memory estimate."""
    from ilm.model import memory

    tok.save(tmp_path / "tok")
    recipe = _recipe(tmp_path, tmp_path / "long", max_steps=1)
    recipe["model"]["overrides"] = {"vocab_size": 512, "max_position_embeddings": 64,
                                    "rope_scaling": {"type": "dynamic", "factor": 2.0}}
    summary = train(from_dict(SFTConfig, recipe), resume="never")
    assert summary["steps"] == 1 and math.isfinite(_losses(tmp_path / "long")[1])
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    recipe["run_dir"] = str(tmp_path / "refused")
    with pytest.raises(memory.ContextMemoryError,
                       match=r"SFT with train.window 256 x 1 row\(s\) needs an estimated [\d.]+ GiB \(weights .*"
                             r"activations [\d.]+ GiB\) but only 0.00 GiB is available on cpu"):
        train(from_dict(SFTConfig, recipe), resume="never")


def test_long_context_samples_train_with_the_loss_on_the_answer(tok, tmp_path):
    """[data.long_context]: stdlib repositories packed to the window, a question only the context answers; the
    trained tokens are exactly the answer and its <|im_end|>; the run trains on them alone."""
    import sysconfig

    from ilm.train.sft import LongContextData, long_context_conversations

    repo = str(Path(sysconfig.get_paths()["stdlib"]) / "json")
    lc = LongContextData(repos=[repo], reserve=160)  # this 512-token vocabulary spends ~70 tokens on a question
    convs, report = long_context_conversations(lc, tok, 512)
    assert report["window"] == 352 and report["max"] <= 352 and report["over_window"] == 0
    assert report["kept"] == len(convs) > 0.9 * report["samples"] > 3 and report["split_files"] >= 1
    from ilm.data import longctx

    built = longctx.build([repo], [], 352, lambda s: len(tok.encode(s)))[1]
    answers = {b["messages"][1]["content"].strip() for b in built}
    for c in convs:
        assert len(c.ids) <= 512
        answer = tok.decode(c.ids[c.mask.astype(bool)].tolist())
        assert answer.endswith("<|im_end|>") and answer.removesuffix("<|im_end|>").strip() in answers
        assert c.mask.sum() < 100 < len(c.ids)  # the context is long, the trained part is the short answer
    tok.save(tmp_path / "tok")
    recipe = _recipe(tmp_path, tmp_path / "lc", window=512, max_steps=1)
    recipe["data"] = {"train": [], "long_context": {"repos": [repo], "reserve": 160}}
    summary = train(from_dict(SFTConfig, recipe), resume="never")
    assert summary["steps"] == 1 and summary["data"]["long_context"]["kept"] == report["kept"]
    with pytest.raises(ValueError, match=r"data.long_context.window 600 \+ reserve 64 must fit in train.window 512"):
        long_context_conversations(LongContextData(repos=[repo], window=600, reserve=64), tok, 512)
    few, few_report = long_context_conversations(LongContextData(repos=[repo], reserve=160, max_conversations=3),
                                                 tok, 512)  # a data-mix knob: a seeded subset, in order
    full_ids = [c.ids.tolist() for c in convs]
    assert len(few) == few_report["sampled"] == 3 and all(c.ids.tolist() in full_ids for c in few)
    assert [full_ids.index(c.ids.tolist()) for c in few] == sorted(full_ids.index(c.ids.tolist()) for c in few)


def test_long_context_recipes_load_and_point_at_real_inputs():
    from ilm.config import load

    root = Path(__file__).resolve().parents[2]
    tiny = load(SFTConfig, root / "recipes" / "sft-longctx-tiny.toml", base_dir=root)  # its paths are the repo's own
    assert tiny.train.window == 1024 and tiny.data.long_context.reserve == 256
    assert all(Path(p).exists() for p in tiny.data.long_context.repos + tiny.data.long_context.documents)
    big = load(SFTConfig, root / "recipes" / "sft-internlm2-7b.toml")
    assert big.data.long_context.window + big.data.long_context.reserve == big.train.window == 32768


def test_long_context_queries_feed_ppo(tok, tmp_path):
    """The same samples without the answer are PPO queries (RLHF's long-context data)."""
    import sysconfig

    from ilm.data import longctx
    from ilm.train.rlhf.queries import load_queries

    samples, convs, report = longctx.build([Path(sysconfig.get_paths()["stdlib"]) / "json"], [], 400,
                                           lambda s: len(tok.encode(s)))
    paths = longctx.write(tmp_path, samples, convs, report)
    queries, qreport = load_queries([str(paths["queries"])], tok, {"default": "You are helpful."}, "default", 1024)
    assert qreport["kept"] == len(queries) == len(convs) > 0
    assert all(len(q.prompt) <= 1024 for q in queries) and max(len(q.prompt) for q in queries) > 400
