"""PPO's per-row scoring, micro-batched on one rank: the reward model's conditional inputs and scores, and
per-token numbers (log-probabilities, critic values) over the response tokens of each row; then every
rank's rows gathered, so each rank holds the whole rollout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ilm.model import packed_batch, positions_from_doc_ids
from ilm.train.distributed import World
from ilm.train.reward import collate_sequences
from ilm.train.rlhf.queries import Query
from ilm.train.rlhf.rollout import Rollout, collate, gather_positions, sequence_logprobs


def chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def rm_sequences(tok: Any, queries: list[Query], responses: list[list[int]], meta: dict, conditions: dict[str, str],
                 stop_ids: set[int], texts: list[str] | None = None) -> tuple[list[np.ndarray], int]:
    """The reward model's input per row (`ilm rm`'s conditional encoding, `reward.encode_sequence`); returns how
    many were cut to fit. `texts`: the decoded responses, when the caller has them.

    The same ids as `encode_sequence`, with one render per row instead of its three: the condition's length
    (`head`, where a cut starts) is rendered once per condition, and the prefix's end is not needed here."""
    reward_id, max_length = meta["reward_token_id"], meta["max_length"]
    heads: dict[str, int] = {}
    seqs, cut_count = [], 0
    for j, (q, r) in enumerate(zip(queries, responses)):
        text = texts[j] if texts is not None else tok.decode([t for t in r if t not in stop_ids])
        condition = conditions[q.domain]
        system = [{"role": "system", "content": condition}]
        ids = tok.render(system + q.record["messages"] + [{"role": "assistant", "content": text}]).ids + [reward_id]
        if condition not in heads:
            heads[condition] = len(tok.render(system).ids)
        head = heads[condition]
        cut = len(ids) - max_length
        if cut > 0:  # the oldest conversation tokens go first (as `ilm rm`), then the response's start
            cut_count += 1
            ids = ids[:head] + ids[head + cut :]
        seqs.append(np.asarray(ids, dtype=np.int64))
    return seqs, cut_count


@torch.no_grad()
def score_rows(rm, seqs: list[np.ndarray], rows: int, device: torch.device, autocast, pad_id: int) -> list[float]:
    out: list[float] = []
    for chunk in chunks(len(seqs), rows):
        b = collate_sequences([seqs[i] for i in chunk], pad_id=pad_id)
        doc = b["doc_ids"].to(device)
        with autocast():
            r = rm(b["ids"].to(device), b["reward_index"].to(device), positions_from_doc_ids(doc), packed_batch(doc))
        out += r.float().cpu().tolist()
    return out


@torch.no_grad()
def forward_rows(fn, prompts: list[list[int]], responses: list[list[int]], rows: int, pad_id: int, autocast
                 ) -> list[list[float]]:
    """Per-row response-token numbers from `fn(batch) -> (B, R)`, micro-batched."""
    out: list[list[float]] = []
    for chunk in chunks(len(prompts), rows):
        b = collate([prompts[i] for i in chunk], [responses[i] for i in chunk], pad_id)
        with autocast():
            x = fn(b).float().cpu()
        out += [x[j, : len(responses[i])].tolist() for j, i in enumerate(chunk)]
    return out


def critic_values(critic: nn.Module, b: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """V of the state before each response token: the critic read where the actor predicts that token."""
    return gather_positions(critic(b["ids"].to(device)), b["index"].to(device))


@dataclass
class Scorer:
    """What scoring a rollout reads, fixed for a run: the frozen reference and reward model, the critic, and
    how the reward model's inputs are written (its conditions, `reward_config.json`)."""

    ref: nn.Module
    critic: nn.Module
    rm: nn.Module
    tok: Any
    meta: dict
    conditions: dict[str, str]
    stop_ids: Sequence[int]
    device: torch.device
    autocast: Any
    pad_id: int
    micro_batch_rows: int
    temperature: float

    def score(self, rollouts: list[Rollout], queries: list[Query], rows: list[int], actor: nn.Module | None
              ) -> tuple[list[dict], int]:
        """Per row (`rows`: the row index in the whole rollout): reference log-probs, old log-probs (sampling
        time, or the actor's training forward when `actor` is given), values, the RM score and the response
        text (stop tokens dropped); and how many RM inputs were cut to fit."""
        n, pad_id, autocast = self.micro_batch_rows, self.pad_id, self.autocast
        prompts = [r.prompt for r in rollouts]
        responses = [r.response for r in rollouts]
        ref_lp = forward_rows(lambda b: sequence_logprobs(self.ref, b, self.temperature)[0], prompts, responses,
                              n, pad_id, autocast)
        old_lp = [r.logprobs for r in rollouts]
        if actor is not None:
            old_lp = forward_rows(lambda b: sequence_logprobs(actor, b, self.temperature)[0], prompts, responses,
                                  n, pad_id, autocast)
        vals = forward_rows(lambda b: critic_values(self.critic, b, self.device), prompts, responses, n,
                            pad_id, autocast)
        stops = set(self.stop_ids)
        texts = [self.tok.decode([t for t in r if t not in stops]) for r in responses]
        seqs, rm_cut = rm_sequences(self.tok, queries, responses, self.meta, self.conditions, stops, texts)
        scores = score_rows(self.rm, seqs, n, self.device, autocast, pad_id)
        mine = [{"row": i, "prompt": r.prompt, "response": r.response, "old": o, "ref": f, "values": v,
                 "score": s, "truncated": r.truncated, "entropy": r.entropy, "text": x} for i, r, o, f, v, s, x in
                zip(rows, rollouts, old_lp, ref_lp, vals, scores, texts)]
        return mine, rm_cut


def all_gather(obj: Any, world: World) -> list[Any]:
    if world.size == 1:
        return [obj]
    box: list[Any] = [None] * world.size
    dist.all_gather_object(box, obj)
    return box


def all_sum(values: list[float], world: World) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if world.size > 1:
        t = t.to(world.device)
        dist.all_reduce(t)
    return t.cpu().tolist()
