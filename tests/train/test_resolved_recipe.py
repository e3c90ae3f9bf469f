"""Issue 10 item 13: every training command keeps the recipe it ran with (overrides applied) in
RUN_DIR/config.toml, and `ilm.config.load` reads it back to the same config."""

import json
from pathlib import Path

import pytest

from ilm.cli import main
from ilm.config import load
from ilm.train.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[2]


def test_pretrain_run_dir_keeps_the_resolved_recipe(corpus, tmp_path, helpers):
    recipe = helpers.write_recipe(tmp_path / "r.toml", helpers.tiny_recipe(corpus, tmp_path / "run"))
    overrides = ["--train.max_steps=2", "--optim.lr=0.0021", '--stages.0.mixture={a = 0.6, b = 0.4}']
    assert main(["pretrain", str(recipe), *overrides]) == 0
    saved = tmp_path / "run" / "config.toml"
    assert (tmp_path / "run" / "metrics.jsonl").exists() and saved.exists()
    text = saved.read_text()
    assert "lr = 0.0021" in text and "max_steps = 2" in text
    back = load(PretrainConfig, saved)
    assert back == load(PretrainConfig, recipe, overrides)
    assert back.optim.lr == 0.0021 and back.train.max_steps == 2 and back.stages[0].mixture == {"a": 0.6, "b": 0.4}


def _stage_configs():
    from ilm.train.reward import RMConfig
    from ilm.train.rlhf.ppo import PPOConfig
    from ilm.train.rlhf.rounds import RoundsConfig
    from ilm.train.sft import SFTConfig

    return {"tiny": PretrainConfig, "internlm2-7b": PretrainConfig, "sft-tiny": SFTConfig, "rm-tiny": RMConfig,
            "rlhf-tiny": PPOConfig, "rlhf-internlm2-7b": PPOConfig, "rlhf-rounds-tiny": RoundsConfig}


@pytest.mark.parametrize("name", list(_stage_configs()))
def test_every_stage_config_writes_back_to_an_equal_recipe(name, tmp_path, monkeypatch):
    """The writer covers what every stage's recipe holds (tables, arrays of tables, lists, free-key tables);
    relative default paths are written absolute against the working directory."""
    from ilm.config import to_toml

    monkeypatch.chdir(tmp_path)
    cls = _stage_configs()[name]
    cfg = load(cls, REPO / "recipes" / f"{name}.toml", ['--run_dir="/abs/run dir"'])
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    back = load(cls, path)
    if name == "rlhf-rounds-tiny":  # its inner PPO run_dir is a relative default: written against the cwd
        assert back.ppo.run_dir == str(tmp_path / cfg.ppo.run_dir)
        back.ppo.run_dir = cfg.ppo.run_dir
    assert back == cfg
    assert json.dumps(back.run_dir) in path.read_text()
