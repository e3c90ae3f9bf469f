"""PPO's memory pre-check (ilm.train.rlhf.ppo_memory): the peak is the models plus the larger of the
generation and training phases, frozen models and the rollout copy in the dtype they run in; the 7B recipe
fits 8 x 80 GB, and a too-small GPU is refused with one line naming the estimate, before any model is built."""

from pathlib import Path

import pytest

from ilm.config import load
from ilm.model import memory
from ilm.model.config import get_preset
from ilm.model.memory import ContextMemoryError
from ilm.train.rlhf.ppo import PPOConfig, train
from ilm.train.rlhf.ppo_memory import check_memory, ppo_estimate

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "rlhf-internlm2-7b.toml"
GB = 10**9


def _recipe_7b():
    cfg = load(PPOConfig, RECIPE)
    return get_preset("internlm2-7b"), cfg


def test_the_7b_recipe_fits_8_x_80_gb():
    config, cfg = _recipe_7b()
    p, t = cfg.ppo, cfg.train
    est = ppo_estimate(config, p, t, cfg.data.max_query_tokens, 8, "cuda")
    print(f"7B recipe, 8 x 80 GB: {est.describe()}; peak {est.peak.total / 2**30:.2f} GiB ({est.peak_phase})")
    n, seq = config.num_params(), cfg.data.max_query_tokens + p.max_new_tokens
    assert est.frozen.total == 2 * n * 2 // 8  # reference + reward model, bf16, sharded
    assert est.rollout_copy.total == n * 2  # whole, bf16
    kv_bf16 = 2 * config.num_layers * p.generation_batch * config.num_kv_heads * config.head_dim * seq * 2
    assert est.generation.kv_cache == kv_bf16
    assert est.peak.total == est.models.total + max(est.generation.total, est.training.total)  # not their sum
    assert est.peak.total <= 80 * GB
    # one process or DDP decodes with the fp32 actor itself: no rollout copy, an fp32 KV cache
    ddp = ppo_estimate(config, p, type(t)(**{**vars(t), "fsdp": False}), cfg.data.max_query_tokens, 8, "cuda")
    assert ddp.rollout_copy.total == 0 and ddp.generation.kv_cache == 2 * kv_bf16


def test_a_24_gb_gpu_is_refused_with_the_estimate_named(monkeypatch):
    import torch

    config, cfg = _recipe_7b()
    monkeypatch.setattr(memory, "available_bytes", lambda device: 24 * GB)
    with pytest.raises(ContextMemoryError) as err:
        check_memory(config, cfg.ppo, cfg.train, cfg.data.max_query_tokens, 8, torch.device("cuda"))
    msg = str(err.value)
    print(msg)
    peak = ppo_estimate(config, cfg.ppo, cfg.train, cfg.data.max_query_tokens, 8, "cuda").peak.total
    assert "\n" not in msg and f"needs an estimated {peak / 2**30:.2f} GiB" in msg and "22.35 GiB is available" in msg


def test_the_run_is_refused_before_any_model_is_built(rlhf, corpus, helpers, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    cfg = load(PPOConfig, helpers.write_recipe(tmp_path / "r.toml", helpers.rlhf_recipe(rlhf, corpus, tmp_path / "run")))
    built = []
    from ilm.train.rlhf import ppo

    monkeypatch.setattr(ppo, "build_model", lambda *a, **k: built.append(1))
    with pytest.raises(ContextMemoryError, match="PPO with queries of up to .* needs an estimated"):
        train(cfg, resume="never")
    assert built == [] and not (tmp_path / "run" / "metrics.jsonl").exists()
