"""SFT, the reward model and PPO stop on a signal like pretraining (issue 10, item 8): with the stop flag raised,
each finishes the step in progress, saves a checkpoint at that step and raises `Interrupted`."""

import json
import signal
from pathlib import Path

import pytest

from ilm.config import from_dict
from ilm.train import checkpoint, run


@pytest.fixture
def stop_flag():
    run._STOP.update(signal=int(signal.SIGINT))  # as the SIGINT handler does
    yield
    run._STOP.update(signal=0, at=0.0, agreed=False)


def _stops_after_step_one(train, cfg, run_dir: Path) -> None:
    with pytest.raises(run.Interrupted) as stop:
        train(cfg, resume="never")
    assert stop.value.step == 1 and stop.value.signum == signal.SIGINT
    assert checkpoint.latest(run_dir).name == "step-00000001"
    assert not (run_dir / "final").exists()


def _tokenizer(corpus, root: Path) -> Path:
    corpus["tok"].save(root / "tok")
    return root / "tok"


def test_sft_stops_after_the_step(corpus, tmp_path, stop_flag):
    from ilm.train.demo_data import demo_conversations
    from ilm.train.sft import SFTConfig, train

    (tmp_path / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in demo_conversations(n=24, seed=1)))
    cfg = from_dict(SFTConfig, {
        "run_dir": str(tmp_path / "run"), "tokenizer": str(_tokenizer(corpus, tmp_path)),
        "model": {"preset": "tiny", "overrides": {"vocab_size": 512, "max_position_embeddings": 256}},
        "data": {"train": [str(tmp_path / "train.jsonl")]},
        "train": {"window": 256, "batch_rows": 2, "micro_batch_rows": 1, "precision": "fp32", "device": "cpu",
                  "progress": False, "checkpoint_every": 100}})
    _stops_after_step_one(train, cfg, tmp_path / "run")


def test_reward_model_stops_after_the_step(corpus, tmp_path, stop_flag):
    from ilm.train.demo_data import demo_pairs
    from ilm.train.reward import RMConfig, train

    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in demo_pairs(40, seed=0)))
    cfg = from_dict(RMConfig, {
        "run_dir": str(tmp_path / "run"), "tokenizer": str(_tokenizer(corpus, tmp_path)),
        "model": {"preset": "tiny", "overrides": {"vocab_size": 512, "max_position_embeddings": 256}},
        "data": {"train": [str(tmp_path / "pairs.jsonl")], "max_length": 256},
        "train": {"batch_tokens": 2048, "precision": "fp32", "device": "cpu", "progress": False,
                  "checkpoint_every": 100, "eval_every": 1000}})
    _stops_after_step_one(train, cfg, tmp_path / "run")


def test_ppo_stops_after_the_update(rlhf, corpus, tmp_path, helpers, stop_flag):
    from ilm.train.rlhf.ppo import PPOConfig, train

    recipe = helpers.rlhf_recipe(rlhf, corpus, tmp_path / "run")
    recipe["train"].update(checkpoint_every=100)
    _stops_after_step_one(train, from_dict(PPOConfig, recipe), tmp_path / "run")
