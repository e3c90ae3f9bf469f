"""Decode cost per token under dynamic NTK, at 1x, 2x and 4x max_position_embeddings (W), on CPU.

The `small` preset (random weights, fp32) with W = 1,024 and dynamic NTK x2. Each context length L gets one
row prefilled into a KV cache (causal rule; the 4x prefill is timed), then decode steps are timed from that
cache: 16 steps at positions L..L+15, the cache rewound after each round (the same work every
round). Rounds interleave the lengths 1x, 2x, 4x, 4x, 2x, 1x; per round the ratio 4x / 1x, median and range
over rounds. Past W every step re-rotates each cached key to the step's RoPE base (O(L) per token, the same
order as attention itself); the baseline is what `generate` did before: a fresh prefill of the whole
sequence for every token past W (`Sampling(ntk="recompute")`), timed at 4x. ILM_BENCH_QUICK=1: W = 256.
Times are the process's CPU seconds on one torch thread (`time.process_time`): the 2-core machine this was
written on is shared by several jobs, and wall time there swings by 10x from one timing to the next.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from ilm.model import KVCache, build_model, get_preset
from ilm.model.attention import AttnBatch
from ilm.model.generate import prefill

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"
W = 256 if QUICK else 1024
STEPS = 16
ROUNDS = 3 if QUICK else 5
CHUNK = 2048


@torch.inference_mode()
def _prefilled(model, ids: torch.Tensor, causal: bool = True) -> tuple[KVCache, float]:
    cfg = model.config
    T = ids.shape[1]
    cache = KVCache(cfg, 1, T + STEPS, torch.device("cpu"), torch.float32)
    t0 = time.process_time()
    prefill(model, ids, torch.ones(1, T, dtype=torch.bool), cache, CHUNK, backend="sdpa", causal=causal)
    return cache, time.process_time() - t0


@torch.inference_mode()
def _decode(model, cache: KVCache, L: int) -> float:
    """Seconds per token for STEPS decode steps at positions L.. (the generator's decode step, unpadded)."""
    cache.length = L
    token = torch.tensor([[5]])
    t0 = time.process_time()
    for i in range(STEPS):
        model(token, torch.tensor([[L + i]]), AttnBatch(), cache)
    return (time.process_time() - t0) / STEPS


def main() -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = get_preset("small", max_position_embeddings=W, rope_scaling={"type": "dynamic", "factor": 2.0})
    model = build_model(cfg, seed=0).eval()
    lengths = {"1x": W, "2x": 2 * W, "4x": 4 * W}
    ids = torch.randint(3, cfg.vocab_size, (1, 4 * W))
    caches, prefill_s = {}, {}
    for name, L in lengths.items():
        caches[name], prefill_s[name] = _prefilled(model, ids[:, :L])
    print(f"small preset, fp32, W = max_position_embeddings = {W}, dynamic NTK x2, {torch.get_num_threads()} "
          f"threads; {STEPS} decode steps per timing, {ROUNDS} rounds interleaved 1x,2x,4x,4x,2x,1x")
    per = {name: [] for name in lengths}
    ratios = []
    for _ in range(ROUNDS):
        got = {name: [] for name in lengths}
        for name in ("1x", "2x", "4x", "4x", "2x", "1x"):
            got[name].append(_decode(model, caches[name], lengths[name]))
        for name in lengths:
            per[name].append(min(got[name]))
        ratios.append(per["4x"][-1] / per["1x"][-1])
    recompute = [_prefilled(model, ids, causal=False)[1] for _ in range(2)]  # one token's re-prefill at 4x
    ms = {name: statistics.median(v) * 1e3 for name, v in per.items()}
    print(f"{'context':>8} | {'tokens':>6} | {'CPU ms / token (median)':>24}")
    for name, L in lengths.items():
        print(f"{name:>8} | {L:>6} | {ms[name]:>24.2f}")
    ratio = statistics.median(ratios)
    print(f"decode 4x / 1x: median {ratio:.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}) -- target within 3x")
    old = min(recompute) * 1e3
    print(f"baseline, re-prefill per token at 4x (ntk='recompute'): {old:.1f} ms / token = "
          f"{old / ms['4x']:.0f}x the cached step; causal prefill of the 4x prompt: {prefill_s['4x']:.2f} s")
    return {"preset": "small", "dtype": "float32", "max_position_embeddings": W, "steps": STEPS, "rounds": ROUNDS,
            "threads": torch.get_num_threads(), "clock": "process CPU time", "ms_per_token": ms, "ratio_4x_over_1x": ratio,
            "ratio_range": [min(ratios), max(ratios)], "recompute_ms_per_token_4x": old,
            "prefill_s": prefill_s}


if __name__ == "__main__":
    main()
