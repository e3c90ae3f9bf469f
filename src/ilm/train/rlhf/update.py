"""PPO's update: the trained models (actor and critic in one module, one AdamW), the per-token rewards and
advantages of a whole rollout, and the `ppo.ppo_epochs` passes over shuffled mini-batches.

Rewards: -kl_coef * KL_t(actor || reference) on every response token (estimator `ppo.kl_estimator`) plus
the reward model's score on the last one (plus `ppo.missing_eos_penalty`, when set, if the response ran
into `max_new_tokens` without a stop token: otherwise a cut-off answer scores like a finished one); GAE
(gamma, lambda) over them; advantages whitened over the whole rollout. A pass: `ppo.mini_batches`
optimizer steps, each the token-weighted mean over every rank's micro-batches (`run.accumulate`) of the
clipped value loss, the clipped policy loss (once the actor trains) and, per step, the pretraining loss
(ptx) on `ppo.ptx_rows` packed rows.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ilm.model import InternLM2, packed_batch, positions_from_doc_ids
from ilm.train.distributed import World
from ilm.train.losses import gae, kl_penalty, policy_loss, value_loss, whiten
from ilm.train.reward_model import RewardModel
from ilm.train.rlhf.rollout import collate, sequence_logprobs
from ilm.train.rlhf.scoring import chunks, critic_values
from ilm.train.run import accumulate


class Critic(nn.Module):
    """The reward model's backbone with its head read at every position: values (B, T), fp32."""

    def __init__(self, rm: RewardModel):
        super().__init__()
        self.backbone = rm.backbone
        self.v_head = rm.v_head
        self.backbone.output.requires_grad_(False)  # the LM head is not used

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.v_head(self.backbone(input_ids, return_hidden=True)).squeeze(-1).float()


class PPOModels(nn.Module):
    """What a checkpoint holds: the two trained models (one optimizer, one parameter group per lr)."""

    def __init__(self, actor: InternLM2, critic: Critic):
        super().__init__()
        self.actor = actor
        self.critic = critic


def build_optimizer(models: PPOModels, cfg: Any) -> torch.optim.AdamW:
    """AdamW over the actor's and the critic's trained parameters (`cfg`: the recipe's `[optim]`)."""
    groups = []
    for role, module, lr in (("actor", models.actor, cfg.actor_lr), ("critic", models.critic, cfg.critic_lr)):
        params = [p for p in module.parameters() if p.requires_grad]
        groups.append({"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": lr, "role": role})
        groups.append({"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr, "role": role})
    # foreach: multi-tensor kernels instead of torch's default off CUDA, a Python loop over the parameters;
    # the same arithmetic (tests/train/test_ppo_pinned.py). (fused=True is 4x faster still on CPU, but rounds
    # differently: the pinned losses move in the 6th digit.)
    optimizer = torch.optim.AdamW(groups, lr=cfg.actor_lr, betas=tuple(cfg.betas), eps=cfg.eps, foreach=True)
    # AdamW creates a parameter's state at its first step; the actor's first step comes only after the
    # critic warm-up, and a checkpoint taken before it would lack that state (a strict load then fails).
    # Create it now exactly as AdamW would (step 0, zero moments), so every checkpoint holds all of it.
    for group in optimizer.param_groups:
        for q in group["params"]:
            optimizer.state[q] = {"step": torch.zeros((), dtype=torch.get_default_dtype()),
                                  "exp_avg": torch.zeros_like(q, memory_format=torch.preserve_format),
                                  "exp_avg_sq": torch.zeros_like(q, memory_format=torch.preserve_format)}
    return optimizer


def pad(rows: list[list[float]], width: int) -> torch.Tensor:
    """Rows of floats right-padded with 0 to `width`, fp32 (one tensor built, not one per row)."""
    return torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=torch.float32).reshape(len(rows), width)


def advantages(everything: list[dict], p: Any) -> dict[str, Any]:
    """Rewards, GAE advantages and returns of the whole rollout (every rank computes the same), as tensors
    (N rows x R response positions) with the row lists the mini-batches collate from."""
    N = len(everything)
    lengths = torch.tensor([len(x["response"]) for x in everything])
    R = max(int(lengths.max()), 1)
    mask = (torch.arange(R)[None, :] < lengths[:, None]).long()
    old_logp, ref_logp = pad([x["old"] for x in everything], R), pad([x["ref"] for x in everything], R)
    old_values = pad([x["values"] for x in everything], R)
    score = torch.tensor([x["score"] for x in everything])
    final = score  # what the last response token earns: the RM score (+ the missing-stop penalty)
    if p.missing_eos_penalty is not None:
        final = score + p.missing_eos_penalty * torch.tensor([float(x["truncated"]) for x in everything])
    kl = kl_penalty(old_logp, ref_logp, p.kl_estimator) * mask
    rewards = -p.kl_coef * kl
    last = (lengths - 1).clamp(min=0)
    rewards[torch.arange(N), last] += final * (lengths > 0)
    adv, returns = gae(rewards, old_values, mask, p.gamma, p.lam)
    if p.whiten_advantages:
        adv = whiten(adv, mask)
    return {"prompts": [x["prompt"] for x in everything], "responses": [x["response"] for x in everything],
            "old_values": old_values, "returns": returns, "old_logp": old_logp, "adv": adv,
            "lengths": lengths, "mask": mask, "score": score, "kl": kl}


def ppo_loss(ix: list[int], actor: nn.Module | None, critic: nn.Module, roll: dict, sums: dict, p: Any,
             dev: torch.device, autocast, pad_id: int) -> torch.Tensor:
    """Mean over the rows `ix`'s response tokens of the clipped value loss, plus the clipped policy loss when
    the actor trains (`actor` None during the warm-up); the token sums go to `sums` for the metrics."""
    b = collate([roll["prompts"][i] for i in ix], [roll["responses"][i] for i in ix], pad_id)
    w = b["mask"].shape[1]
    m = b["mask"].to(dev)
    n = float(m.sum())
    with autocast():
        v_new = critic_values(critic, b, dev)
    vf = value_loss(v_new.float(), roll["old_values"][ix, :w].to(dev), roll["returns"][ix, :w].to(dev), m,
                    p.value_clip)
    loss = p.vf_coef * vf
    sums["vf"] += float(vf.detach()) * n
    if actor is not None:
        with autocast():
            logp, _ = sequence_logprobs(actor, b, p.temperature)
        pg, frac = policy_loss(logp.float(), roll["old_logp"][ix, :w].to(dev), roll["adv"][ix, :w].to(dev), m, p.clip)
        loss = loss + pg
        sums["pg"] += float(pg.detach()) * n
        sums["clip"] += float(frac) * n
    return loss


def ptx_loss(batch: tuple[torch.Tensor, ...], actor: nn.Module, sums: dict, coef: float, dev: torch.device,
             autocast) -> torch.Tensor:
    """coef x the mean next-token loss over a micro-batch of packed pretraining rows (ids, doc ids, labels)."""
    ids, doc, labels = batch
    d = doc.to(dev)
    with autocast():
        lm = actor(ids.to(dev), positions_from_doc_ids(d), packed_batch(d), labels=labels.to(dev))
    n = float((labels != -100).sum())
    sums["ptx"] += float(lm.detach()) * n
    sums["ptx_n"] += n
    return coef * lm


def optimise(models: PPOModels, optimizer: torch.optim.Optimizer, roll: dict, p: Any, grad_clip: float,
             world: World, seed: int, update: int, actor_trains: bool, packer: Any, dev: torch.device, autocast,
             pad_id: int) -> tuple[dict[str, float], int, dict[str, list[float]]]:
    """The PPO epochs over mini-batches of one update: (loss token sums of this rank, optimizer steps,
    grad norms per model). `update` is the index of the update being made (before it is counted)."""
    from ilm.data.packing import packed_labels

    actor, critic, mask = models.actor, models.critic, roll["mask"]
    N = len(roll["responses"])
    sums = {"pg": 0.0, "clip": 0.0, "vf": 0.0, "ptx": 0.0, "ptx_n": 0.0}
    steps = 0
    grad_norms: dict[str, list[float]] = {"actor": [], "critic": []}
    per_mini = N // p.mini_batches
    loss = partial(ppo_loss, actor=actor if actor_trains else None, critic=critic, roll=roll, sums=sums,
                   p=p, dev=dev, autocast=autocast, pad_id=pad_id)
    lm_loss = partial(ptx_loss, actor=actor, sums=sums, coef=p.ptx_coef, dev=dev, autocast=autocast)
    for epoch in range(p.ppo_epochs):
        perm = np.random.default_rng([seed, update, epoch]).permutation(N)
        for k in range(p.mini_batches):
            # one optimizer step: the token-weighted mean over the mini-batch's rows on every process
            # (`run.accumulate`); gradients are reduced once per step, in each model's last backward: the
            # ptx rows go first and do not reduce, the PPO rows' last micro-batch reduces actor and critic
            if actor_trains and packer is not None:
                ids, doc = packer.next_batch(p.ptx_rows)
                labels = packed_labels(ids, doc)
                my = list(range(world.rank, p.ptx_rows, world.size))
                rows_ptx = [[my[j] for j in chunk] for chunk in chunks(len(my), p.micro_batch_rows)]
                accumulate(actor, [(ids[ix], doc[ix], labels[ix]) for ix in rows_ptx],
                           [int((labels[ix] != -100).sum()) for ix in rows_ptx], lm_loss, world, reduce=False)
            batch_rows = perm[k * per_mini : (k + 1) * per_mini]
            my_rows = batch_rows[world.rank :: world.size].tolist()
            micro = [[my_rows[j] for j in chunk] for chunk in chunks(len(my_rows), p.micro_batch_rows)]
            accumulate(models, micro, [int(mask[ix].sum()) for ix in micro], loss, world)
            if actor_trains:
                grad_norms["actor"].append(float(torch.nn.utils.clip_grad_norm_(
                    [q for q in actor.parameters() if q.grad is not None], grad_clip)))
            grad_norms["critic"].append(float(torch.nn.utils.clip_grad_norm_(
                [q for q in critic.parameters() if q.grad is not None], grad_clip)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    return sums, steps, grad_norms
