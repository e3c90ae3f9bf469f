"""Every number of docs/recipe.md, Pretraining is a default in recipes/internlm2-*.toml."""

from pathlib import Path

import pytest

from ilm.config import RecipeError, load
from ilm.train.pretrain import PretrainConfig, plan_stages

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TOKENS = {"internlm2-1.8b": 2.2e12, "internlm2-7b": 2.6e12, "internlm2-20b": 2.6e12}


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_section5_numbers(name):
    cfg = load(PretrainConfig, RECIPES / f"{name}.toml")
    assert cfg.model.preset == name
    o = cfg.optim
    assert (o.betas, o.eps, o.weight_decay, o.final_lr_fraction) == ((0.9, 0.95), 1e-8, 0.1, 0.1)
    assert cfg.train.total_tokens == TOKENS[name]
    assert cfg.train.batch_tokens == 4 * 1024 * 1024  # 4M tokens in both the 4k and the 32k stage
    s1, s2, s3 = cfg.stages
    assert (s1.window, s1.fraction) == (4096, 0.90)
    assert (s2.window, s2.fraction) == (32768, 0.09)
    assert cfg.model.overrides["rope_theta"] == 50_000 and s2.rope_theta == 1_000_000
    assert 20e9 <= s3.fraction * cfg.train.total_tokens <= 30e9  # ~24B tokens of enhancement data
    plans = plan_stages(cfg, world_size=8)
    assert plans[1].model_config.rope_theta == 1_000_000 and plans[1].model_config.max_position_embeddings == 32768
    assert [p.rows_per_step * p.config.window for p in plans] == [4 * 1024 * 1024] * 3


def test_tiny_recipe_loads_and_plans():
    cfg = load(PretrainConfig, RECIPES / "tiny.toml")
    plans = plan_stages(cfg)
    assert [p.config.window for p in plans] == [64, 256, 256]
    assert plans[1].model_config.rope_theta == 1_000_000


def test_unknown_key_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nbatch_tokenz = 5\n")
    with pytest.raises(RecipeError, match=r"bad\.toml: train: unknown key\(s\) \['batch_tokenz'\]"):
        load(PretrainConfig, bad)


def test_overrides_apply():
    cfg = load(PretrainConfig, RECIPES / "tiny.toml", ["--train.max_steps=7", "--optim.lr=0.5", "--stages.1.window=128"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 0.5 and cfg.stages[1].window == 128


def test_overrides_pick_named_sources_and_stages():
    """`--sources.text.path=DIR` on the list of named sources (and stages by name); a name that is not there is
    refused naming the ones that are; hostile parts (a huge index, an empty name) are refused the same way."""
    cfg = load(PretrainConfig, RECIPES / "tiny.toml", ["--sources.text.path=mine", "--stages.long.window=512",
                                                      "--sources.1.path=other"])
    assert [(s.name, s.path) for s in cfg.sources] == [("text", "mine"), ("code", "other")]
    assert [s.window for s in cfg.stages] == [64, 512, 256]
    for bad in ("--sources.txt.path=x", f"--sources.{10**30}.path=x", "--sources..path=x", "--sources.2.path=x"):
        with pytest.raises(RecipeError, match=r"sources has no element .* \(use names \['text', 'code'\], or an "
                                              r"index 0\.\.1\)"):
            load(PretrainConfig, RECIPES / "tiny.toml", [bad])
    with pytest.raises(RecipeError, match=r"run_dir is 'x', not a table"):
        load(PretrainConfig, RECIPES / "tiny.toml", ["--run_dir=x", "--run_dir.deeper=y"])


def test_rlhf_section7_numbers():
    from ilm.train.rlhf.ppo import PPOConfig

    cfg = load(PPOConfig, RECIPES / "rlhf-internlm2-7b.toml")
    p = cfg.ppo
    assert (p.kl_coef, p.kl_estimator, p.top_p, p.temperature, p.gamma, p.lam) == (0.01, "k1", 0.9, 1.0, 1.0, 0.99)
    assert (p.clip, p.value_clip, p.critic_warmup_updates, p.ptx_coef) == (0.2, 0.2, 50, 0.5)
    assert (cfg.optim.actor_lr, cfg.optim.critic_lr) == (1e-6, 5e-6)
    assert 150_000 <= cfg.train.updates * p.rollout_batch <= 250_000 and cfg.train.updates == 400  # ~200k queries
    # pretraining tokens per optimizer step ~ the mini-batch's rollout tokens (~50% of the data), taking a
    # rollout (prompt + response) as ~1k tokens, half the 2k response budget
    rollout_tokens = p.rollout_batch // p.mini_batches * p.max_new_tokens // 2
    assert 0.8 <= p.ptx_rows * p.ptx_window / rollout_tokens <= 1.25
    tiny = load(PPOConfig, RECIPES / "rlhf-tiny.toml")
    assert tiny.train.device == "cpu" and tiny.ppo.ptx_coef == 0.5 and tiny.ppo.top_p == 0.9
    assert tiny.ppo.rollout_batch % (tiny.ppo.generation_batch * 1) == 0
