"""PPO's losses against hand-computed values on fixed tensors; padded positions (mask 0) never contribute."""

import math

import pytest
import torch

from ilm.train.losses import gae, kl_penalty, masked_mean, policy_loss, value_loss, whiten


def test_gae_by_hand_with_padding_at_the_end_and_in_the_middle():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0], [0.5, 7.0, 1.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [1.0, 2.0, 9.0], [1.0, 9.0, 2.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: d2 = 2 - 1.5 = .5; d1 = 0 + 1.5 - 1 = .5, A1 = .5 + .5*.5; d0 = 1 + 1 - .5 = 1.5, A0 = 1.5 + .5*.75
    # row 1 (last slot padded): d1 = 1 - 2 = -1; d0 = .5 + 2 - 1 = 1.5, A0 = 1.5 + .5*(-1)
    # row 2 (middle slot padded): the same numbers as row 1 without the pad
    assert torch.allclose(adv, torch.tensor([[1.875, 0.75, 0.5], [1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]))
    assert torch.allclose(ret, torch.tensor([[2.375, 1.75, 2.0], [2.0, 1.0, 0.0], [2.0, 0.0, 1.0]]))
    adv, _ = gae(rewards[:1], values[:1], mask[:1], gamma=0.9, lam=1.0)
    # d2 = .5; d1 = 0 + .9*1.5 - 1 = .35, A1 = .35 + .9*.5 = .8; d0 = 1 + .9*1 - .5 = 1.4, A0 = 1.4 + .9*.8
    assert torch.allclose(adv, torch.tensor([[2.12, 0.8, 0.5]]))


def test_whiten_uses_real_positions_only():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    std = math.sqrt(1.25)  # of 1, 2, 3, 4 (mean 2.5)
    expected = torch.tensor([[-1.5 / std, -0.5 / std, 0.5 / std], [1.5 / std, 0.0, 0.0]])
    assert torch.allclose(whiten(x, mask), expected, atol=1e-6)
    assert masked_mean(x, mask).item() == 2.5


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])  # log r = .5, -1
    assert torch.allclose(kl_penalty(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    assert torch.allclose(kl_penalty(logp, ref, "k2"), torch.tensor([0.125, 0.5]))
    assert torch.allclose(kl_penalty(logp, ref, "k3"), torch.tensor([math.exp(-0.5) - 0.5, math.e - 2.0]))
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(logp, ref, "k4")


def test_clipped_policy_loss_by_hand():
    logp = torch.tensor([[0.0, math.log(1.5), math.log(0.5)], [math.log(1.1), 5.0, 5.0]], requires_grad=True)
    old = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 1.0, -1.0], [-2.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, frac = policy_loss(logp, old, adv, mask, clip=0.2)
    # per token max(-A r, -A clip(r)): r=1 -> -1; r=1.5, A=1 -> max(-1.5, -1.2) = -1.2 (clipped);
    # r=.5, A=-1 -> max(.5, .8) = .8 (clipped); r=1.1, A=-2 -> 2.2; the padded tokens are ignored
    assert loss.item() == pytest.approx((-1.0 - 1.2 + 0.8 + 2.2) / 4)
    assert frac.item() == pytest.approx(0.5)
    loss.backward()
    assert logp.grad[1, 1:].eq(0).all()  # no gradient through padding
    assert logp.grad[0, 1].item() == 0.0 and logp.grad[0, 2].item() == 0.0  # clipped: no gradient
    assert logp.grad[0, 0].item() == pytest.approx(-1.0 / 4)


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 2.0, 0.0, 50.0]], requires_grad=True)
    old = torch.tensor([[1.0, 1.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss = value_loss(values, old, returns, mask, clip=0.2)
    # max((v-R)^2, (old + clip(v-old) - R)^2): 1; max(1, .49) = 1; max(0, .3^2) = .09; the pad is ignored
    assert loss.item() == pytest.approx(0.5 * (1.0 + 1.0 + 0.09) / 3)
    loss.backward()
    assert values.grad[0, 3].item() == 0.0 and values.grad[0, 2].item() == 0.0  # pad; clipped branch
