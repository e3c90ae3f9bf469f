"""Rollouts for PPO: responses sampled with the KV-cache generator, with the log-probability of every
sampled token taken at sampling time, and the training-time recompute of the same numbers.

Which log-probability: the full-vocabulary softmax of `logits / temperature`, i.e. the policy itself, not
the top-p-truncated distribution the token was drawn from. Top-p is an exploration device of the sampler;
PPO's ratio and the KL to the reference compare policies, and under truncation they would be ill-defined
(a token outside the reference's nucleus has probability 0 there) and would jump whenever a tiny weight
change moves a token across the nucleus edge. `sequence_logprobs` (the training forward) computes exactly
this quantity, so the ratio of the first PPO step is 1 up to float rounding (checked to 1e-4 in the tests).

Each update, `rank_rollouts` makes this rank's share of the generate calls, each seeded on its own (the
same tokens come out however many processes share the work). Under FSDP decoding runs on an unsharded
copy of the actor, refreshed by `sync_rollout_copy` (why: the memory plan in `ilm.train.rlhf.ppo_memory`).

A response keeps its stop token (`<|im_end|>` or `</s>`) when one ended it: the stop is an action the
policy took and is trained like any other token. A response that never emitted one (it ran into
`max_new_tokens` or the context) is flagged `truncated`; it is still scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ilm.model import InternLM2
from ilm.model.generate import Sampling, generate_stream
from ilm.train.distributed import World
from ilm.train.rlhf.queries import generation_seed


@dataclass
class Rollout:
    prompt: list[int]  # the rendered query, BOS first, ending in the assistant header
    response: list[int]  # sampled ids, the stop token included when one ended the row
    logprobs: list[float]  # sampling-time log-prob of each response token (see the module docstring)
    truncated: bool  # no stop token: the row ran out of max_new_tokens (or context)
    entropy: list[float] = field(default_factory=list)  # of softmax(logits / T) at each response step


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[token], in fp32: (..., V) logits and (...) ids -> (...)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) per position, fp32: (..., V) -> (...)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def sample(
    model: InternLM2, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int],
    top_p: float = 0.9, temperature: float = 1.0, seed: int | None = None,
) -> list[Rollout]:
    """One ragged batch of rollouts from the KV-cache generator (`ilm.model.generate.generate_stream`)."""
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        stop_ids=tuple(stop_ids), seed=seed, cuda_graph=False)
    out = [Rollout(list(p), [], [], True) for p in prompts]
    seen: list[torch.Tensor] = []
    stops = set(stop_ids)

    def observe(logits: torch.Tensor, token: torch.Tensor) -> None:
        # `token_logprobs` and `entropy` of the step, sharing one log-softmax (the same numbers as calling both)
        logp = F.log_softmax(logits.float() / temperature, dim=-1)
        picked = logp.gather(-1, token.unsqueeze(-1)).squeeze(-1)
        seen.append(torch.stack([picked, -(logp.exp() * logp).sum(-1)], 1).cpu())

    was_training = model.training
    model.eval()
    try:
        for step, tokens in enumerate(generate_stream(model, prompts, sampling, on_step=observe)):
            for r, t, (lp, ent) in zip(out, tokens, seen[step].tolist()):
                if t is None:
                    continue
                r.response.append(t)
                r.logprobs.append(lp)
                r.entropy.append(ent)
                if t in stops:
                    r.truncated = False
    finally:
        model.train(was_training)
    return out


def rank_rollouts(model: InternLM2, prompts: Sequence[Sequence[int]], stop_ids: Sequence[int], p: Any, world: World,
                  seed: int, update: int) -> tuple[list[int], list[Rollout]]:
    """This rank's generate calls of one update (`p`: the recipe's `[ppo]`): (row indices, rollouts)."""
    rows: list[int] = []
    rollouts: list[Rollout] = []
    for c in range(world.rank, len(prompts) // p.generation_batch, world.size):
        idx = list(range(c * p.generation_batch, (c + 1) * p.generation_batch))
        rows += idx
        rollouts += sample(model, [prompts[i] for i in idx], p.max_new_tokens, stop_ids, p.top_p,
                           p.temperature, seed=generation_seed(seed, update, c))
    return rows, rollouts


@torch.no_grad()
def sync_rollout_copy(copy: InternLM2, actor: torch.nn.Module) -> None:
    """Copy the (sharded) actor into the rollout copy one parameter at a time: each is all-gathered whole
    (fp32), cast into the copy and freed, so the transient cost is the largest parameter, not a model."""
    from torch.distributed.tensor import DTensor

    from ilm.model.init import canonical_name

    mine = dict(copy.named_parameters())
    for name, param in actor.named_parameters():
        whole = param.full_tensor() if isinstance(param, DTensor) else param
        mine[canonical_name(name)].copy_(whole)
        del whole


def collate(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Prompt + response per row, right-padded (causal attention never looks right, so padding there changes
    nothing before it), and where each response sits.

    ids (B, L); index (B, R): the position whose output predicts response token j of row i (prompt length
    - 1 + j, clamped inside the row); mask (B, R): 1 on real response tokens; response (B, R): the ids.
    """
    B = len(prompts)
    L = max(len(p) + len(r) for p, r in zip(prompts, responses))
    R = max(max((len(r) for r in responses), default=0), 1)
    # built as Python lists and converted once (a tensor per row costs more than the rows at PPO's sizes)
    ids = torch.tensor([[*p, *r] + [pad_id] * (L - len(p) - len(r)) for p, r in zip(prompts, responses)],
                       dtype=torch.long).reshape(B, L)
    starts = torch.tensor([len(p) - 1 for p in prompts], dtype=torch.long)
    index = (starts[:, None] + torch.arange(R)).clamp(max=L - 1)
    lengths = torch.tensor([len(r) for r in responses], dtype=torch.long)
    mask = (torch.arange(R)[None, :] < lengths[:, None]).long()
    response = torch.tensor([[*r] + [pad_id] * (R - len(r)) for r in responses], dtype=torch.long).reshape(B, R)
    return {"ids": ids, "index": index, "mask": mask, "response": response}


def gather_positions(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, L, ...) at index (B, R) -> (B, R, ...)."""
    shape = index.shape + x.shape[2:]
    flat = index.reshape(index.shape[0], -1, *([1] * (x.dim() - 2))).expand(shape)
    return x.gather(1, flat)


def response_logits(model: torch.nn.Module, ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The logits (B, R, V) at `index` (the positions that predict the response tokens). The output head
    runs on those positions only, not on the prompt's (with PPO's short responses a third of the head's
    work or more, forward and backward); except on an FSDP-sharded model, whose head exists whole only
    inside its own forward."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule) or not hasattr(model, "head_weight"):
        return gather_positions(model(ids), index)
    hidden = gather_positions(model(ids, return_hidden=True), index)
    return F.linear(hidden, model.head_weight()) if model.config.norm_head else model.output(hidden)


def sequence_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training forward: log-probs (B, R) of the response tokens (and their entropies), fp32."""
    device = next(iter(model.parameters())).device
    picked = response_logits(model, batch["ids"].to(device), batch["index"].to(device))
    logp = token_logprobs(picked, batch["response"].to(device), temperature)
    ent = entropy(picked.detach(), temperature) if with_entropy else None
    return logp, ent
