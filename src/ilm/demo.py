"""`ilm demo`: the whole recipe, as far as it exists, on the built-in corpus, on CPU, in minutes.

Each stage is one function that takes the run directory and what earlier stages produced, prints what it
did, and returns what later stages need. Stages are added here as they land.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    parser.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    parser.set_defaults(func=run)


def stage_model(out: Path, preset: str) -> dict:
    """Build the model, save it in both HF formats, load both back, check the logits agree, generate."""
    from ilm.model import build_model, get_preset
    from ilm.model.generate import Sampling, generate
    from ilm.model.hf import load_checkpoint, save_checkpoint

    config = get_preset(preset)
    model = build_model(config, seed=0).eval()
    print(f"[model] {preset}: {config.num_params():,} parameters, {config.num_layers} layers, "
          f"{config.num_heads} heads / {config.num_kv_heads} KV heads")
    paths = {fmt: save_checkpoint(model, out / f"checkpoint-{fmt}", fmt=fmt) for fmt in ("internlm2", "llama")}
    ids = torch.randint(3, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids)
        for fmt, path in paths.items():
            diff = (load_checkpoint(path).eval()(ids) - ref).abs().max().item()
            print(f"[model] saved {fmt} checkpoint to {path}; reloaded logits max |diff| = {diff:.2e}")
            if diff > 1e-5:
                raise RuntimeError(f"{fmt} round trip changed the logits by {diff}")
    prompts = [[1, 17, 42, 99], [1, 5], [1, 300, 301, 302, 303, 304]]
    t0 = time.perf_counter()
    greedy = generate(model, prompts, Sampling(max_new_tokens=16, greedy=True, stop_ids=()))
    sampled = generate(model, prompts, Sampling(max_new_tokens=16, top_p=0.9, seed=0, stop_ids=()))
    dt = time.perf_counter() - t0
    for p, g, s in zip(prompts, greedy, sampled):
        print(f"[model] prompt {p} -> greedy {g[:8]}... sampled(top_p=0.9) {s[:8]}...")
    print(f"[model] generated {sum(map(len, greedy + sampled))} tokens in {dt:.2f}s (KV cache, batch of 3)")
    return {"model": model, "checkpoints": paths}


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stage_model(out, args.preset)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s; outputs in {out}/")
    return 0
