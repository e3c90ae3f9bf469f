"""PPO's per-row scoring, micro-batched on one rank: the reward model's conditional inputs and scores, and
per-token numbers (log-probabilities, critic values) over the response tokens of each row."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ilm.model import packed_batch, positions_from_doc_ids
from ilm.train.reward import collate_sequences, encode_sequence
from ilm.train.rlhf.queries import Query
from ilm.train.rlhf.rollout import collate, gather_positions


def chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def rm_sequences(tok: Any, queries: list[Query], responses: list[list[int]], meta: dict, conditions: dict[str, str],
                 stop_ids: set[int]) -> tuple[list[np.ndarray], int]:
    """The reward model's input per row (`ilm rm`'s conditional encoding); returns how many were cut to fit."""
    reward_id, max_length = meta["reward_token_id"], meta["max_length"]
    seqs, cut_count = [], 0
    for q, r in zip(queries, responses):
        text = tok.decode([t for t in r if t not in stop_ids])
        ids, head, _ = encode_sequence(tok, conditions[q.domain], q.record["messages"],
                                           [{"role": "assistant", "content": text}], reward_id)
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
