"""Every loss in one place, each a small pure function tested against its formula on fixed tensors.

`lm_loss` is the next-token cross-entropy fused with the output projection: logits are produced one chunk
of rows at a time, their gradient is computed right away, and the full (tokens x vocab) logits tensor is
never materialised. Same value and gradients as `F.cross_entropy(output(h), labels)`, less memory traffic
(a 92,544-entry vocabulary makes the logits the largest activation of the whole model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_labels(input_ids: torch.Tensor, ignore_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Labels for next-token prediction: position t predicts token t+1; the last position predicts nothing.

    Shifting the labels (not the logits) avoids copying the logits. `ignore_mask` marks tokens that must
    not be predicted (padding, prompt tokens, the first token of a packed document).
    """
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:]
    if ignore_mask is not None:
        labels[:, :-1] = labels[:, :-1].masked_fill(ignore_mask[:, 1:], IGNORE_INDEX)
    return labels


def _ce_chunk(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of one chunk and its gradient wrt the logits (softmax - onehot, zero where ignored).

    `logits` is a temporary owned by the caller and is overwritten: the gradient is built in its memory
    (in place, few passes: this is memory-bound on CPU). On CUDA it is compiled into fused kernels.
    """
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    keep = labels != IGNORE_INDEX
    target = labels.clamp(min=0)[:, None]
    loss = ((lse - x.gather(1, target).squeeze(1)) * keep).sum()
    grad = x.sub_(lse[:, None]).exp_().scatter_add_(1, target, -torch.ones_like(lse)[:, None])
    return loss, grad.mul_(keep[:, None]).to(logits.dtype)


_CE_CHUNK_COMPILED = None


def _ce_chunk_fn(device: torch.device):
    global _CE_CHUNK_COMPILED
    if device.type != "cuda":
        return _ce_chunk
    if _CE_CHUNK_COMPILED is None:
        _CE_CHUNK_COMPILED = torch.compile(_ce_chunk, dynamic=False)
    return _CE_CHUNK_COMPILED


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_rows: int):
        # Under autocast, matmuls run in the autocast dtype (bf16) against fp32 master weights; everything
        # is cast explicitly here, with autocast off, so the `out=` buffers keep their own dtypes.
        dev = hidden.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
        with torch.autocast(dev, enabled=False):
            w = weight.to(dtype)
            h = hidden.reshape(-1, hidden.shape[-1])
            y = labels.reshape(-1)
            count = (y != IGNORE_INDEX).sum().clamp(min=1)
            grad_h = torch.empty_like(h) if hidden.requires_grad else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            chunk_fn = _ce_chunk_fn(h.device)
            for start in range(0, h.shape[0], chunk_rows):
                hc, yc = h[start : start + chunk_rows].to(dtype), y[start : start + chunk_rows]
                loss, g = chunk_fn(hc @ w.t(), yc)
                total += loss
                if grad_h is not None:
                    grad_h[start : start + chunk_rows] = g @ w
                if grad_w is not None:  # the matmul runs in the compute dtype; chunks add up in fp32
                    if dtype == torch.float32:
                        grad_w.addmm_(g.t(), hc)
                    else:
                        grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.shape = hidden.shape
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_out / count
        gh = (grad_h * scale.to(grad_h.dtype)).view(ctx.shape) if grad_h is not None else None
        gw = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def lm_loss(
    hidden: torch.Tensor, output_weight: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 4096
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ output_weight.T` against `labels` (IGNORE_INDEX = skip).

    hidden: (..., D) final-norm activations; output_weight: (V, D); labels: (...).
    """
    if torch.is_grad_enabled() and (hidden.requires_grad or output_weight.requires_grad):
        return _FusedLinearCrossEntropy.apply(hidden, output_weight, labels, chunk_rows)
    logits = (hidden.reshape(-1, hidden.shape[-1]) @ output_weight.t()).float()
    return F.cross_entropy(logits, labels.reshape(-1), ignore_index=IGNORE_INDEX)


# ----------------------------------------------------------------------------- reward model (docs/recipe.md, Reward model)

PENALTY_BOUND = 5.0
PENALTY_EDGE = 1e-3  # the barrier is exact on |x| <= 5 - edge and continues as its tangent line beyond


def focal_ranking_loss(chosen: torch.Tensor, rejected: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Per-pair difficulty-decayed ranking loss: `-(1 - 2 * max(0, P - 1/2)) ** gamma * log(P)`,
    P = sigmoid(chosen - rejected).

    Pairs the model already ranks confidently (P near 1) are down-weighted; pairs it gets wrong (P <= 1/2)
    keep the full -log P. Written as `2 * (P - 1/2) = tanh(d / 2)` and `log P = logsigmoid(d)`, so it is
    finite with finite gradients at any reward difference (no sigmoid that rounds to 0 or 1).
    """
    d = chosen.float() - rejected.float()
    decay = (1.0 - torch.tanh(d / 2).clamp(min=0.0)) ** gamma
    return -decay * F.logsigmoid(d)


def log_barrier_penalty(x: torch.Tensor, bound: float = PENALTY_BOUND, edge: float = PENALTY_EDGE) -> torch.Tensor:
    """Per-score log barrier `-(log(x + 5) + log(5 - x))`, which keeps rewards inside (-5, 5).

    The formula is infinite at +-5 and undefined beyond, where an unlucky step can land; on |x| > 5 - edge
    it continues as its tangent line, so the value and the gradient stay finite and keep pointing back
    inside (the slope there is about 1/edge = 1000, far steeper than the ranking loss can push).
    """
    x = x.float()
    b = bound - edge
    inner = x.clamp(-b, b)
    value = -(torch.log(bound + inner) + torch.log(bound - inner))
    slope = 1.0 / (bound - b) - 1.0 / (bound + b)  # d/dx of the barrier at x = b (by symmetry, -slope at -b)
    return value + slope * torch.relu(x.abs() - b)


def reward_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, gamma: float = 2.0, penalty_weight: float = 0.02
) -> torch.Tensor:
    """Mean over pairs of `L_ranking + lambda * (L_penalty(r_chosen) + L_penalty(r_rejected))`.

    chosen, rejected: (pairs,) scalar rewards. lambda = 0 switches the penalty off (an ablation).
    """
    loss = focal_ranking_loss(chosen, rejected, gamma)
    if penalty_weight:
        loss = loss + penalty_weight * (log_barrier_penalty(chosen) + log_barrier_penalty(rejected))
    return loss.mean()


# ----------------------------------------------------------------------------- PPO (docs/recipe.md, Online RLHF)
#
# Shapes: (B, T) over response tokens, `mask` 1 on real tokens and 0 on padding. Padded positions never
# contribute: they are zeroed before any sum and excluded from every mean and every statistic.


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1 (0 when there are none)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the real positions (population variance); padded positions come out as 0."""
    m = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.99
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's real tokens -> (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; the value after a row's
    last real token is 0 (the episode ends there), and a padded position is skipped as if absent, so a
    row with padding in the middle or at the end gives the same numbers as the row without it.
    returns = advantages + values. Padded positions come out as 0.
    """
    m = mask.to(rewards.dtype)
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        real = m[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * real
        # a padded position passes the later value and advantage through unchanged
        next_value = torch.where(real > 0, values[:, t], next_value)
        next_adv = torch.where(real > 0, a, next_adv)
    return adv, (adv + values) * m


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(actor || reference) from the sampled token's log-probs (Schulman's k1/k2/k3).

    k1 = log r, k2 = (log r)^2 / 2, k3 = (r^-1 - 1) + log r, with log r = logp - ref_logp; all are unbiased
    (k1) or low-variance (k2, k3) estimates when the token was sampled from the actor.
    """
    d = logp.float() - ref_logp.float()
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d**2
    if estimator == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1, k2 or k3")


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: mean over real tokens of max(-A r, -A clip(r, 1-eps, 1+eps)), r = exp(logp - old).

    Returns (loss, clip fraction = share of real tokens where the clipped term was the one taken).
    """
    ratio = torch.exp(logp - old_logp)
    plain = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(plain, clipped), mask)
    frac = masked_mean((clipped > plain).to(logp.dtype), mask)
    return loss, frac.detach()


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """Clipped value loss: mean over real tokens of 0.5 * max((V - R)^2, (V_old + clip(V - V_old, +-eps) - R)^2)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
