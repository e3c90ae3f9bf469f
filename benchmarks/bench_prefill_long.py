"""Long-context prefill tokens/s on CPU: ilm against transformers at 4k, 16k and 32k tokens.

The `small` preset (random weights, fp32, plain RoPE with max_position_embeddings raised to 32,768 so both
run the same function), exported as a Llama checkpoint and loaded with `AutoModelForCausalLM`, as the other
benchmarks do. One prompt of T tokens is prefilled into a KV cache and the last position's logits are
produced:
- ilm, chunked: `ilm.model.generate.prefill` with 2,048-token chunks (what `generate` runs: bounded activation
  memory at any length; with no padding each chunk attends to the cached prefix and to its own causal square,
  two unmasked fused SDPA calls merged by log-sum-exp);
- ilm, one forward: the whole prompt in one causal forward into the cache (what a short prompt gets);
- transformers: `model(input_ids, use_cache=True, logits_to_keep=1)` (a DynamicCache is filled).
They run interleaved, 3 rounds (2 at 32k), and the best round of each is kept, so background load hits all
alike. The logits of the three agree (checked at the first length). ILM_BENCH_QUICK=1 runs 1k and 2k only.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time

import torch

from ilm.model import KVCache, build_model, get_preset
from ilm.model.generate import prefill
from ilm.model.hf import save_checkpoint

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"
LENGTHS = (1024, 2048) if QUICK else (4096, 16384, 32768)
CHUNK = 2048


def _models():
    from transformers import AutoModelForCausalLM

    cfg = get_preset("small", max_position_embeddings=32768)
    ours = build_model(cfg, seed=0).eval()
    path = tempfile.mkdtemp(prefix="ilm-bench-prefill-")
    save_checkpoint(ours, f"{path}/llama", fmt="llama")
    hf = AutoModelForCausalLM.from_pretrained(f"{path}/llama", dtype=torch.float32).eval()
    return cfg, ours, hf


def _runners(cfg, ours, hf, T: int) -> dict:
    ids = torch.randint(3, cfg.vocab_size, (1, T))
    valid = torch.ones(1, T, dtype=torch.bool)

    @torch.inference_mode()
    def run_chunked():
        cache = KVCache(cfg, 1, T, torch.device("cpu"), torch.float32)
        return prefill(ours, ids, valid, cache, CHUNK, backend="sdpa")

    @torch.inference_mode()
    def run_one():
        cache = KVCache(cfg, 1, T, torch.device("cpu"), torch.float32)
        return ours(ids, cache=cache, last_only=True)[:, -1]

    @torch.inference_mode()
    def run_hf():
        return hf(input_ids=ids, use_cache=True, logits_to_keep=1).logits[:, -1]

    return {"ilm_chunked": run_chunked, "ilm_one_forward": run_one, "transformers": run_hf}


def main() -> dict:
    torch.manual_seed(0)
    cfg, ours, hf = _models()
    results: dict = {"preset": "small", "dtype": "float32", "chunk": CHUNK, "threads": torch.get_num_threads(),
                     "lengths": {}}
    print(f"{'tokens':>7} | {'ilm chunked':>12} | {'ilm one fwd':>12} | {'transformers':>12} | chunked/hf | one/hf")
    for T in LENGTHS:
        fns = _runners(cfg, ours, hf, T)
        run_chunked, run_one, run_hf = fns.values()
        if T == LENGTHS[0]:
            a, b, c = run_chunked(), run_one(), run_hf()
            results["max_abs_logit_diff_vs_transformers"] = max((a - c).abs().max().item(), (b - c).abs().max().item())
        rounds = 2 if T >= 32768 else 3
        best = {k: 0.0 for k in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                best[name] = max(best[name], T / (time.perf_counter() - t))
        row = {k: round(v, 1) for k, v in best.items()}
        row["chunked_vs_transformers"] = round(best["ilm_chunked"] / best["transformers"], 2)
        row["one_forward_vs_transformers"] = round(best["ilm_one_forward"] / best["transformers"], 2)
        results["lengths"][T] = row
        print(f"{T:>7} | {row['ilm_chunked']:>12,.0f} | {row['ilm_one_forward']:>12,.0f} | {row['transformers']:>12,.0f} "
              f"| {row['chunked_vs_transformers']:>9.2f}x | {row['one_forward_vs_transformers']:.2f}x", flush=True)
    results["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(f"peak RSS {results['peak_rss_gib']} GiB; max |logit diff| vs transformers "
          f"{results['max_abs_logit_diff_vs_transformers']:.2e}")
    return results


if __name__ == "__main__":
    main()
