"""The reward-model losses against the docs/recipe.md, Reward model formulas, on fixed tensors, with finite gradients."""

import math

import pytest
import torch

from ilm.train.losses import focal_ranking_loss, log_barrier_penalty, reward_loss


def ranking_formula(d: float, gamma: float = 2.0) -> float:
    """-(1 - 2 * max(0, P - 1/2)) ** gamma * log(P), P = sigmoid(d), in float64 (log1p for P near 1)."""
    p = 1.0 / (1.0 + math.exp(-d))
    log_p = -math.log1p(math.exp(-d)) if d > -30 else d
    return -((1.0 - 2.0 * max(0.0, p - 0.5)) ** gamma) * log_p


def penalty_formula(x: float) -> float:
    return -(math.log(x + 5.0) + math.log(5.0 - x))


DIFFS = [-8.0, -2.0, -0.5, 0.0, 0.25, 1.0, 3.0, 6.0, 30.0]


@pytest.mark.parametrize("gamma", [2.0, 1.0, 0.0])
def test_focal_ranking_equals_formula(gamma):
    chosen = torch.tensor(DIFFS) + 0.7  # the loss depends on the difference only
    rejected = torch.full_like(chosen, 0.7)
    got = focal_ranking_loss(chosen, rejected, gamma)
    want = torch.tensor([ranking_formula(d, gamma) for d in DIFFS])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_focal_ranking_special_points():
    at_half = focal_ranking_loss(torch.tensor([1.5]), torch.tensor([1.5]))
    assert at_half.item() == pytest.approx(math.log(2.0), rel=1e-6)  # P = 0.5: full weight, -log 0.5
    # P -> 1: the decay factor (2(1 - P))^2 times -log P goes to 0 faster than -log P alone
    near_one = focal_ranking_loss(torch.tensor([12.0, 30.0, 200.0]), torch.zeros(3))
    assert near_one[0].item() == pytest.approx(ranking_formula(12.0), rel=1e-3)
    assert near_one[0].item() < 1e-10 and near_one[1].item() == 0.0 and near_one[2].item() == 0.0
    # P < 0.5 (ranked the wrong way): no decay, exactly -log P
    wrong = focal_ranking_loss(torch.tensor([0.0]), torch.tensor([3.0]))
    assert wrong.item() == pytest.approx(math.log1p(math.exp(3.0)), rel=1e-6)
    # gamma = 0 is the plain Bradley-Terry loss
    d = torch.tensor(DIFFS)
    torch.testing.assert_close(focal_ranking_loss(d, torch.zeros_like(d), 0.0), -torch.nn.functional.logsigmoid(d))


def test_focal_ranking_gradient_equals_derivative():
    for d in (-1.5, 0.8, 2.0):
        x = torch.tensor([d], requires_grad=True)
        focal_ranking_loss(x, torch.zeros(1)).sum().backward()
        t, s = math.tanh(max(d, 0.0) / 2), 1 / (1 + math.exp(-d))
        decay = 1 - t
        dt = 0.5 * (1 - t * t) if d > 0 else 0.0
        want = 2 * decay * dt * math.log(s) - decay**2 * (1 - s)  # d/dd of -(1-t)^2 log sigmoid(d)
        assert x.grad.item() == pytest.approx(want, rel=1e-5)


def test_penalty_equals_formula_including_499():
    xs = [-4.99, -3.0, -0.5, 0.0, 1.0, 4.0, 4.99]
    got = log_barrier_penalty(torch.tensor(xs))
    torch.testing.assert_close(got, torch.tensor([penalty_formula(x) for x in xs]), rtol=1e-5, atol=1e-6)
    assert got[0].item() == pytest.approx(-(math.log(0.01) + math.log(9.99)), rel=1e-5)
    x = torch.tensor([-4.99, 4.99], requires_grad=True)
    log_barrier_penalty(x).sum().backward()
    want = [-(1 / (x0 + 5) - 1 / (5 - x0)) for x0 in (-4.99, 4.99)]  # d/dx -(log(x+5) + log(5-x))
    torch.testing.assert_close(x.grad, torch.tensor(want), rtol=1e-3, atol=1e-3)


def test_penalty_safe_at_and_beyond_five():
    xs = torch.tensor([-1e4, -50.0, -5.5, -5.0, -4.9995, 4.9995, 5.0, 5.5, 50.0, 1e4], requires_grad=True)
    value = log_barrier_penalty(xs)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(xs.grad).all()
    assert (xs.grad[xs > 0] > 0).all() and (xs.grad[xs < 0] < 0).all()  # descent always moves back inside
    assert (value[[0, 1, 2, 3]] > 4.6).all()  # at least the value at the edge of the exact region
    # continuous where the exact barrier hands over to its tangent line
    edge = torch.tensor([4.999 - 1e-5, 4.999 + 1e-5], dtype=torch.float64)
    a, b = log_barrier_penalty(edge).tolist()
    assert abs(a - b) < 0.05
    assert value[6].item() < value[7].item() < value[8].item()  # still increasing outward


def test_reward_loss_combines_both_penalties():
    chosen = torch.tensor([1.0, -2.0, 4.99, 0.0])
    rejected = torch.tensor([0.5, 3.0, -4.99, 0.0])
    rank = focal_ranking_loss(chosen, rejected, 2.0)
    pen = log_barrier_penalty(chosen) + log_barrier_penalty(rejected)
    torch.testing.assert_close(reward_loss(chosen, rejected, 2.0, 0.02), (rank + 0.02 * pen).mean())
    torch.testing.assert_close(reward_loss(chosen, rejected, 2.0, 0.0), rank.mean())
    want = sum(ranking_formula(c - r) + 0.02 * (penalty_formula(c) + penalty_formula(r))
               for c, r in zip(chosen.tolist(), rejected.tolist())) / 4
    assert reward_loss(chosen, rejected).item() == pytest.approx(want, rel=1e-5)


def test_finite_gradients_everywhere():
    grid = torch.tensor([-1e3, -7.0, -5.0, -4.99, -1.0, 0.0, 1.0, 4.99, 5.0, 7.0, 1e3])
    chosen = grid.repeat_interleave(len(grid)).clone().requires_grad_(True)
    rejected = grid.repeat(len(grid)).clone().requires_grad_(True)
    loss = reward_loss(chosen, rejected, 2.0, 0.02)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # reward scores from a bf16 model
        assert torch.isfinite(reward_loss(chosen.bfloat16(), rejected.bfloat16()))


def test_batch_loss_neutral_pairs_take_no_ranking_loss_and_are_held_at_a_margin_of_zero():
    """RMData.neutral (the patch's pairs that carry the flagged pattern): out of the ranking loss, in the anchor at
    margin >= min(init margin, 0); the batch stays pair-weighted. All ranked: exactly reward_loss as before."""
    import numpy as np

    from ilm.train.losses import reward_loss
    from ilm.train.reward import Pair, RMLoss, batch_loss

    ids = np.zeros(2, dtype=np.int64)
    loss = RMLoss(anchor_weight=10.0)
    rewards = torch.tensor([1.0, 0.0, -0.5, 0.5, 2.0, 1.0, 0.3, 0.8])  # margins 1, -1, 1, -0.5
    ranked = [Pair(ids, ids, "d") for _ in range(4)]
    assert batch_loss(rewards, ranked, loss) == reward_loss(rewards[0::2], rewards[1::2])
    mixed = [Pair(ids, ids, "d"), Pair(ids, ids, "d"), Pair(ids, ids, "d", anchor=0.0, ranked=False),
             Pair(ids, ids, "d", anchor=0.0, ranked=False)]
    want = reward_loss(rewards[0:4:2], rewards[1:4:2]) * 2 / 4 + 10.0 * (0.5 ** 2) / 4  # only pair 4 is below 0
    assert torch.allclose(batch_loss(rewards, mixed, loss), want)
    only = [Pair(ids, ids, "d", anchor=0.0, ranked=False) for _ in range(4)]
    r = rewards.clone().requires_grad_()
    out = batch_loss(r, only, loss)
    assert torch.allclose(out, torch.tensor(10.0 * (1.0 + 0.25) / 4))  # pairs 2 and 4 are below margin 0
    out.backward()
    assert r.grad[0] == 0 and r.grad[4] == 0  # a neutral pair above margin 0 gets no gradient at all
