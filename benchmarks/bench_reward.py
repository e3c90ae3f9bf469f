"""Reward-model training on CPU: token-budget packed batches (ours) against fixed-size padded batches (what a
pairwise RM trainer does by default: k pairs per batch, each sequence right-padded to the longest).

1. Padding waste at the recipe's scale, by arithmetic on a realistic length mix (prompt ~150 tokens, answers
   ~250, long tails, capped at 8,192): token-budget batches of 16,384 tokens vs fixed batches of k pairs,
   k chosen so both average the same number of real tokens per batch.
2. Throughput through the same RewardModel, optimiser and loss on CPU: pairs/s and real tokens/s, on real
   preference pairs (`ilm.train.demo_data.demo_pairs`, rendered with the chat format and a condition).
"""

from __future__ import annotations

import os
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ilm.model import build_model, get_preset, packed_batch, positions_from_doc_ids
from ilm.train.demo_data import demo_pairs
from ilm.train.losses import reward_loss
from ilm.train.optim import OptimConfig, build_optimizer
from ilm.train.reward import RMData, collate_pairs, encode_pairs, token_budget_batches
from ilm.train.reward_model import REWARD_TOKEN, RewardModel
from ilm.train.sft import write_jsonl

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"


def padding_waste(n_pairs: int = 20_000, budget: int = 16_384, max_length: int = 8192, seed: int = 0) -> dict:
    """Share of computed tokens that are padding: token budget (packed; padded to the budget) vs fixed k pairs."""
    rng = np.random.default_rng(seed)
    prompt = rng.lognormal(np.log(150), 1.0, n_pairs)
    answers = rng.lognormal(np.log(250), 0.8, (n_pairs, 2))
    seqs = np.clip((prompt[:, None] + answers).astype(int), 16, max_length)
    sizes = seqs.sum(1)
    batches = token_budget_batches(sizes.tolist(), budget, seed)
    fills = np.array([sizes[b].sum() for b in batches])
    k = max(1, round(budget / sizes.mean()))
    order = rng.permutation(n_pairs)
    fixed_real, fixed_computed, fixed_peak = 0, 0, 0
    for start in range(0, n_pairs, k):
        idx = order[start : start + k]
        computed = 2 * len(idx) * seqs[idx].max()
        fixed_real, fixed_computed = fixed_real + seqs[idx].sum(), fixed_computed + computed
        fixed_peak = max(fixed_peak, computed)
    return {
        "pairs": n_pairs, "mean_pair_tokens": round(float(sizes.mean()), 1), "budget": budget,
        "budget_batches": len(batches), "budget_mean_fill": round(float(fills.mean() / budget), 4),
        "budget_packed_waste": 0.0,  # one row of exactly the real tokens, per-sequence attention
        "budget_padded_to_budget_waste": round(float(1 - fills.sum() / (len(batches) * budget)), 4),
        "budget_peak_tokens": int(fills.max()),
        "fixed_pairs_per_batch": k, "fixed_batches": -(-n_pairs // k),
        "fixed_waste": round(float(1 - fixed_real / fixed_computed), 4), "fixed_peak_tokens": int(fixed_peak),
    }


def _pairs(root: Path, n: int, max_length: int):
    from ilm.tokenizer import train_tokenizer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (root / "text.txt").write_text("\n".join(p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py"))[:60]))
    tok = train_tokenizer([root / "text.txt"], root / "tok", vocab_size=2048)
    path = write_jsonl(root / "pairs.jsonl", demo_pairs(n=n, seed=0))
    pairs, _ = encode_pairs([path], tok, RMData(max_length=max_length), tok.control_ids[REWARD_TOKEN])
    return pairs


def _padded(pairs) -> dict[str, torch.Tensor]:
    """Fixed-size baseline: 2k rows right-padded to the longest; causal attention never reaches the padding."""
    seqs = [s for p in pairs for s in (p.chosen, p.rejected)]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), 2, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.from_numpy(s)
    index = torch.stack([torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])], dim=1)
    return {"ids": ids, "reward_index": index}


def _step(model, opt, group, packed: bool) -> float:
    t0 = time.perf_counter()
    if packed:
        b = collate_pairs(group)
        r = model(b["ids"], b["reward_index"], positions_from_doc_ids(b["doc_ids"]), packed_batch(b["doc_ids"]))
    else:
        b = _padded(group)
        r = model(b["ids"], b["reward_index"])
    reward_loss(r[0::2], r[1::2]).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def throughput(pairs, ours: list[list[int]], fixed: list[list[int]], steps: int, threads: int,
               preset: str = "small") -> dict:
    """Both batchings on identical models, steps interleaved (so machine load hits both alike)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    runs = {}
    for name in ("token_budget_packed", "fixed_padded"):
        torch.manual_seed(0)
        model = RewardModel(build_model(get_preset(preset, vocab_size=2048, max_position_embeddings=2048)))
        runs[name] = (model, build_optimizer(model, OptimConfig(lr=1e-5, weight_decay=0.01, warmup_steps=0)),
                      [], [], [])
    try:
        for step in range(steps + 2):
            for name, groups in (("token_budget_packed", ours), ("fixed_padded", fixed)):
                model, opt, times, n_pairs, n_tokens = runs[name]
                group = [pairs[i] for i in groups[step % len(groups)]]
                dt = _step(model, opt, group, name == "token_budget_packed")
                if step >= 2:  # warm-up
                    times.append(dt)
                    n_pairs.append(len(group))
                    n_tokens.append(sum(p.tokens for p in group))
    finally:
        torch.set_num_threads(before)
    out = {}
    for name, (_, _, times, n_pairs, n_tokens) in runs.items():
        out[name] = {"pairs_per_s": round(sum(n_pairs) / sum(times), 2),
                     "tokens_per_s": round(sum(n_tokens) / sum(times), 1),
                     "median_step_s": round(statistics.median(times), 4),
                     "mean_pairs_per_batch": round(float(np.mean(n_pairs)), 1)}
    out["packed_over_padded"] = round(out["token_budget_packed"]["tokens_per_s"] / out["fixed_padded"]["tokens_per_s"], 3)
    return out


def main() -> dict:
    results = {"padding_16k": padding_waste(5_000 if QUICK else 20_000)}
    w = results["padding_16k"]
    print(f"padding at 16,384 tokens/batch: token budget {w['budget_mean_fill']:.1%} full (packed: no padding; "
          f"padded to the budget: {w['budget_padded_to_budget_waste']:.1%} waste), peak {w['budget_peak_tokens']:,} "
          f"tokens; fixed {w['fixed_pairs_per_batch']} pairs/batch: {w['fixed_waste']:.1%} waste, "
          f"peak {w['fixed_peak_tokens']:,} tokens", flush=True)
    budget = 4096
    with tempfile.TemporaryDirectory() as tmp:
        pairs = _pairs(Path(tmp), 400 if QUICK else 1200, max_length=1024)
    sizes = [p.tokens for p in pairs]
    ours = token_budget_batches(sizes, budget, seed=0)
    k = max(1, round(budget / np.mean(sizes)))
    order = np.random.default_rng(0).permutation(len(pairs)).tolist()
    fixed = [order[i : i + k] for i in range(0, len(order), k)]
    real = sum(sum(pairs[i].tokens for i in g) for g in fixed)
    computed = sum(2 * len(g) * max(max(len(pairs[i].chosen), len(pairs[i].rejected)) for i in g) for g in fixed)
    results["demo_pairs"] = {"pairs": len(pairs), "mean_pair_tokens": round(float(np.mean(sizes)), 1),
                             "budget": budget, "fixed_pairs_per_batch": k, "fixed_waste": round(1 - real / computed, 4)}
    steps = 6 if QUICK else 12
    for threads in sorted({1, torch.get_num_threads()}):
        results[f"threads_{threads}"] = r = throughput(pairs, ours, fixed, steps, threads)
        print(f"{threads} thread(s): packed {r['token_budget_packed']}; padded {r['fixed_padded']}; "
              f"packed / padded real tokens/s {r['packed_over_padded']}", flush=True)
    print(f"demo pairs: {results['demo_pairs']}")
    return results


if __name__ == "__main__":
    main()
