"""The PPO query pool: jsonl `{messages, category}` rendered to prompts (every skip and fallback counted),
the queries each update takes (a pure function of the seed, so a resumed run takes the same ones), and the
demo's queries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ilm.train.sft import read_jsonl


@dataclass
class Query:
    index: int  # line order among the kept queries
    record: dict  # the jsonl object as read
    prompt: list[int]  # rendered messages + the assistant header
    domain: str  # the reward model's condition used
    unknown_category: bool


def load_queries(paths: list[str], tok: Any, conditions: dict[str, str], default_domain: str, max_tokens: int,
                 ) -> tuple[list[Query], dict[str, Any]]:
    """Read and render the query pool; every skip and fallback counted."""
    skipped = {"invalid_json": 0, "bad_record": 0, "empty": 0, "too_long": 0}
    report: dict[str, Any] = {"queries": 0, "kept": 0, "skipped": skipped, "unknown_category": 0,
                              "unknown_categories": {}, "examples": []}
    out: list[Query] = []

    def skip(reason: str, where: str, detail: str) -> None:
        skipped[reason] += 1
        if len(report["examples"]) < 5:
            report["examples"].append(f"{where}: {reason}: {detail:.120}")

    for where, obj in read_jsonl(paths):
        report["queries"] += 1
        if isinstance(obj, json.JSONDecodeError):
            skip("invalid_json", where, str(obj))
            continue
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            skip("bad_record", where, "needs a `messages` list of message objects")
            continue
        if not any(str(m.get("content") or "").strip() for m in msgs):
            skip("empty", where, "no message has any content")
            continue
        try:
            prompt = tok.render(msgs, add_generation_prompt=True).ids
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            skip("bad_record", where, str(err))
            continue
        if len(prompt) > max_tokens:
            skip("too_long", where, f"{len(prompt)} tokens > data.max_query_tokens {max_tokens}")
            continue
        category = obj.get("category")
        unknown = category not in conditions
        if unknown:
            report["unknown_category"] += 1
            report["unknown_categories"][str(category)] = report["unknown_categories"].get(str(category), 0) + 1
        out.append(Query(len(out), obj, prompt, default_domain if unknown else category, unknown))
    report["kept"] = len(out)
    return out, report


def query_indices(pool: int, update: int, batch: int, seed: int) -> list[int]:
    """The queries of update `update`: positions [u*batch, (u+1)*batch) of a walk through seeded permutations
    of the pool, one per epoch. A pure function, so a resumed run takes the same queries."""
    out: list[int] = []
    pos = update * batch
    while len(out) < batch:
        epoch, offset = divmod(pos, pool)
        perm = np.random.default_rng([seed, epoch]).permutation(pool)
        take = min(batch - len(out), pool - offset)
        out += perm[offset : offset + take].tolist()
        pos += take
    return out


def generation_seed(seed: int, update: int, chunk: int) -> int:
    return (seed * 1_000_003 + update * 10_007 + chunk) % (1 << 62)


def demo_queries(n: int = 256, seed: int = 0) -> list[dict]:
    """Queries for the tiny recipe: the prompts of the reward model's demo pairs, with their domain as category."""
    from ilm.train.demo_data import demo_pairs

    return [{"messages": [{"role": "user", "content": p["prompt"]}], "category": p["domain"]}
            for p in demo_pairs(n=n, seed=seed + 1)]
