"""The conditional reward model's data: preference pairs read, conditioned (the domain's system prompt before the
conversation) and cut to `data.max_length` tokens ending in the reward token; batches by a token budget; collation
into one packed row per batch. `ilm.train.reward` trains on them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ilm.train.sft import pack_best_fit, read_jsonl

if TYPE_CHECKING:
    from ilm.train.reward import RMData


@dataclass
class Pair:
    chosen: np.ndarray  # int64 ids ending in the reward token
    rejected: np.ndarray
    domain: str  # the condition actually used
    anchor: float | None = None  # the init model's margin (chosen - rejected) not to fall below, for data.anchor pairs
    ranked: bool = True  # in the ranking loss (data.neutral pairs: the anchor only)

    @property
    def tokens(self) -> int:
        return len(self.chosen) + len(self.rejected)


def _messages(x: Any) -> list[dict]:
    """A response as messages: a string is one assistant turn; a dict one message; a list several."""
    if isinstance(x, str):
        return [{"role": "assistant", "content": x}]
    if isinstance(x, dict):
        return [x]
    if isinstance(x, list):
        return x
    raise ValueError(f"a response must be a string, a message or a list of messages, not {type(x).__name__}")


def _is_empty(msgs: list[dict]) -> bool:
    return not any(str(m.get("content") or "").strip() or m.get("tool_calls") for m in msgs if isinstance(m, dict))


def encode_sequence(tok: Any, condition: str, prefix: list[dict], response: list[dict], reward_id: int) -> tuple[list[int], int, int]:
    """Ids of `<s> condition prefix response <reward>`, with where the prefix starts and the response starts."""
    system = [{"role": "system", "content": condition}]
    ids = tok.render(system + prefix + response).ids + [reward_id]
    head = len(tok.render(system).ids)
    start = len(tok.render(system + prefix).ids) if prefix else head
    return ids, head, start


def _cut(ids: list[int], head: int, cut: int) -> np.ndarray:
    """Drop `cut` tokens right after the condition (the oldest of the conversation prefix)."""
    return np.asarray(ids[:head] + ids[head + cut :], dtype=np.int64)


def encode_pairs(
    paths: Iterable[str | Path], tok: Any, data: RMData, reward_id: int
) -> tuple[list[Pair], dict[str, Any]]:
    """jsonl preference pairs -> conditioned, truncated token pairs, with every drop and fallback counted."""
    if data.default_domain not in data.conditions:
        raise ValueError(f"data.default_domain {data.default_domain!r} has no entry in data.conditions "
                         f"({sorted(data.conditions)})")
    pairs: list[Pair] = []
    dropped = {"invalid_json": 0, "bad_record": 0, "identical": 0, "empty_response": 0, "too_long": 0}
    report: dict[str, Any] = {"pairs": 0, "kept": 0, "truncated": 0, "dropped": dropped, "unknown_domain": 0,
                              "unknown_domains": {}, "by_domain": {}, "examples": []}

    def drop(reason: str, where: str, detail: str) -> None:
        dropped[reason] += 1
        if len(report["examples"]) < 5:
            report["examples"].append(f"{where}: {reason}: {detail:.120}")

    for where, obj in read_jsonl(paths):
        report["pairs"] += 1
        if isinstance(obj, json.JSONDecodeError):
            drop("invalid_json", where, str(obj))
            continue
        try:
            if not isinstance(obj, dict) or "chosen" not in obj or "rejected" not in obj:
                raise ValueError("needs `chosen` and `rejected`")
            prefix = obj.get("prefix")
            if prefix is None:
                prompt = obj.get("prompt")
                prefix = [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt else []
            if not isinstance(prefix, list):
                raise ValueError("`prefix` must be a list of messages")  # noqa: TRY004 (bad data, counted)
            chosen, rejected = _messages(obj["chosen"]), _messages(obj["rejected"])
        except ValueError as err:
            drop("bad_record", where, str(err))
            continue
        if _is_empty(chosen) or _is_empty(rejected):
            drop("empty_response", where, "a response has no content")
            continue
        if json.dumps(chosen, sort_keys=True) == json.dumps(rejected, sort_keys=True):
            drop("identical", where, "chosen == rejected: nothing to rank")
            continue
        domain = obj.get("domain")
        if domain not in data.conditions:
            report["unknown_domain"] += 1
            key = str(domain)
            report["unknown_domains"][key] = report["unknown_domains"].get(key, 0) + 1
            domain = data.default_domain
        try:
            c, head, c_start = encode_sequence(tok, data.conditions[domain], prefix, chosen, reward_id)
            r, _, r_start = encode_sequence(tok, data.conditions[domain], prefix, rejected, reward_id)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            drop("bad_record", where, str(err))
            continue
        cut = max(len(c), len(r)) - data.max_length
        if cut > 0:
            if cut > min(c_start, r_start) - head:
                drop("too_long", where, f"{max(len(c), len(r))} tokens > max_length {data.max_length} "
                                        "even without the conversation prefix")
                continue
            report["truncated"] += 1
        cut = max(cut, 0)
        pairs.append(Pair(_cut(c, head, cut), _cut(r, head, cut), domain))
        report["by_domain"][domain] = report["by_domain"].get(domain, 0) + 1
    report["kept"] = len(pairs)
    return pairs, report


def token_budget_batches(sizes: list[int], budget: int, seed: int, epochs: int = 1,
                         mixed: bool = False) -> list[list[int]]:
    """Pair indices grouped into batches of at most `budget` tokens (whole pairs), batch order shuffled.

    Best-fit packing sorts by length, so pairs of like length (often of one kind) share a batch; `mixed`
    packs the pairs in a random order per epoch instead (less full batches, each a sample of all the data).
    """
    batches: list[list[int]] = []
    for epoch in range(epochs):
        if mixed:
            order = np.random.default_rng([seed, epoch, 1]).permutation(len(sizes)).tolist()
            packed, room = [], 0
            for i in order:
                if not packed or sizes[i] > room:
                    packed.append([])
                    room = budget
                packed[-1].append(i)
                room -= sizes[i]
            batches += packed
            continue
        packed = pack_best_fit(sizes, budget)
        perm = np.random.default_rng([seed, epoch]).permutation(len(packed))
        batches += [packed[i] for i in perm]
    return batches


def collate_sequences(seqs: list[np.ndarray], pad_to: int | None = None, pad_id: int = 2) -> dict[str, torch.Tensor]:
    """One row holding every sequence as its own document, and the (row, column) of each one's reward token."""
    ids = np.concatenate(seqs)
    doc = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
    ends = np.cumsum([len(s) for s in seqs]) - 1
    if pad_to is not None and pad_to > len(ids):
        ids = np.concatenate([ids, np.full(pad_to - len(ids), pad_id, dtype=np.int64)])
        doc = np.concatenate([doc, np.full(pad_to - len(doc), len(seqs))])
    index = torch.stack([torch.zeros(len(ends), dtype=torch.long), torch.from_numpy(ends).long()], dim=1)
    return {"ids": torch.from_numpy(ids)[None], "doc_ids": torch.from_numpy(doc)[None], "reward_index": index}


def collate_pairs(pairs: list[Pair], pad_to: int | None = None, pad_id: int = 2) -> dict[str, torch.Tensor]:
    """chosen_0, rejected_0, chosen_1, ... in one row: rewards[0::2] are the chosen, rewards[1::2] the rejected."""
    return collate_sequences([s for p in pairs for s in (p.chosen, p.rejected)], pad_to, pad_id)
