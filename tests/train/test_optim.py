import itertools

import pytest
import torch

from ilm.model import build_model, get_preset
from ilm.train.optim import OptimConfig, build_optimizer, lr_at


def test_recipe_defaults():
    cfg = OptimConfig()
    assert (cfg.betas, cfg.eps, cfg.weight_decay, cfg.final_lr_fraction, cfg.grad_clip) == ((0.9, 0.95), 1e-8, 0.1, 0.1, 1.0)


def test_warmup_then_cosine_to_ten_percent():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(1e-4)  # 10% of max
    assert lrs[10 + 44] == pytest.approx(1e-4 + 0.9e-3 * 0.5, rel=0.05)  # half way down the cosine


def test_weight_decay_on_matrices_only():
    model = build_model(get_preset("tiny"))
    opt = build_optimizer(model, OptimConfig())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    assert isinstance(opt, torch.optim.AdamW)
