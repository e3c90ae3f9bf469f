"""`benchmarks.gpu_check` parts 4-7: PPO in bf16, serving under concurrency, NIAH at 32k, FSDP2 with 2 processes.

Shared fixtures (built once per check run, in its scratch dir): a 512-token tokenizer trained on Python's
standard library, its token shards, an actor checkpoint (random weights) with the tokenizer beside it, a
reward-model export on the same tokenizer and a query file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from ilm.model import build_model, get_preset


def _stdlib_text(limit: int) -> list[str]:
    import sysconfig

    docs = []
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        for chunk in p.read_text(errors="replace").split("\n\n\n"):
            if 200 <= len(chunk) <= 4000:
                docs.append(chunk.strip())
        if len(docs) >= limit:
            break
    return docs[:limit]


def token_shards(ctx) -> str:
    """Random token documents (vocabulary 512) as a shard directory: training needs no tokenizer."""
    def make() -> str:
        import numpy as np

        from ilm.data.shards import write_token_shards

        rng = np.random.default_rng(0)
        write_token_shards(ctx.tmp / "random-tokens", [rng.integers(3, 512, int(n)) for n in rng.integers(16, 200, 300)])
        return str(ctx.tmp / "random-tokens")

    return ctx.once("token_shards", make)


class ByteTokenizer:
    """NIAH's tokenizer protocol over UTF-8 bytes (ids 3..258): the long path needs no trained tokenizer."""

    bos_id, eos_id, stop_ids = 1, 2, (2,)

    def encode(self, text: str, bos: bool = False) -> list[int]:
        return [self.bos_id] * bos + [b + 3 for b in text.encode()]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode(errors="replace")


def workspace(ctx) -> dict[str, Any]:
    """Tokenizer, token shards, actor and reward-model checkpoints, queries (see the module docstring)."""
    def make() -> dict[str, Any]:
        from ilm.data.shards import tokenize_to_shards
        from ilm.model.hf import save_checkpoint
        from ilm.tokenizer import train_tokenizer
        from ilm.train.reward_model import REWARD_TOKEN, RewardModel, save_reward_model

        root = ctx.tmp / "ws"
        docs = _stdlib_text(200 if ctx.dry else 600)
        (root / "raw").mkdir(parents=True)
        (root / "train.txt").write_text("\n".join(d.replace("\n", " ") for d in docs))
        tok = train_tokenizer([root / "train.txt"], root / "tokenizer", vocab_size=512)
        with open(root / "raw" / "docs.jsonl", "w") as f:
            f.writelines(json.dumps({"id": str(i), "text": d}) + "\n" for i, d in enumerate(docs))
        tokenize_to_shards([root / "raw"], root / "tokenizer", root / "tokens", workers=1)
        extras = {p.name: p.read_bytes() for p in (root / "tokenizer").iterdir() if p.is_file()}
        cfg = get_preset("tiny" if ctx.dry else "small", vocab_size=512)
        save_checkpoint(build_model(cfg, seed=0), root / "actor", extra_files=extras)
        rm = RewardModel(build_model(cfg, seed=1), seed=2)
        meta = {"reward_token": REWARD_TOKEN, "reward_token_id": tok.control_ids[REWARD_TOKEN],
                "conditions": {"default": "Be helpful."}, "default_domain": "default", "max_length": 512}
        save_reward_model(rm, root / "rm", meta, root / "tokenizer")
        words = ["apple", "river", "stone", "cloud", "seven", "green", "light", "table", "music", "north"]
        with open(root / "queries.jsonl", "w") as f:
            f.writelines(json.dumps({"messages": [{"role": "user", "content": " ".join(words[i % 7: i % 7 + 3])}],
                                    "category": "default"}) + "\n" for i in range(64))
        return {"root": root, "tok": tok, "tokenizer": root / "tokenizer", "tokens": root / "tokens",
                "actor": root / "actor", "rm": root / "rm", "queries": root / "queries.jsonl", "config": cfg}

    return ctx.once("workspace", make)


# ----------------------------------------------------------------------------- 4. PPO


def ppo(ctx) -> dict[str, Any]:
    """Two PPO updates in bf16 (rollout copy, log-probs recomputed by a training forward); the actor trains
    from update 1, so its first mini-batch's ratio is exactly 1 (clip fraction 0) and its KL to the
    reference ~0."""
    from ilm.config import from_dict
    from ilm.train.rlhf.ppo import PPOConfig, train

    ws = workspace(ctx)
    run_dir = ctx.tmp / "ppo"
    rollout = 4 if ctx.dry else 32
    cfg = from_dict(PPOConfig, {
        "run_dir": str(run_dir), "actor": str(ws["actor"]), "reward_model": str(ws["rm"]),
        "data": {"queries": [str(ws["queries"])], "ptx": [str(ws["tokens"])], "max_query_tokens": 96},
        "ppo": {"rollout_batch": rollout, "generation_batch": rollout // 2, "max_new_tokens": 8 if ctx.dry else 48,
                "mini_batches": 1, "ppo_epochs": 1, "micro_batch_rows": rollout // 2, "critic_warmup_updates": 0,
                "ptx_rows": 2, "ptx_window": 32 if ctx.dry else 128, "recompute_logprobs": True},
        "optim": {"actor_lr": 1e-4, "critic_lr": 1e-4},
        "train": {"updates": 2, "precision": "bf16", "device": ctx.device.type, "checkpoint_every": 10**6,
                  "progress": False},
    })
    with mock.patch("ilm.train.rlhf.ppo.plot", return_value=None):  # no matplotlib needed on the device
        train(cfg, resume="never")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = rows[0]
    ratio_one = first["clip_fraction"] == 0.0
    kl_small = abs(first["kl_per_token"]) < 1e-2
    ok = len(rows) == 2 and ratio_one and kl_small
    keep = ("reward_mean", "kl", "kl_per_token", "clip_fraction", "policy_loss", "value_loss", "rollout_tokens",
            "rollout_tokens_per_s", "update_s")
    return {"status": "pass" if ok else "fail", "updates": [{k: r.get(k) for k in keep} for r in rows],
            "first_update_clip_fraction_zero": ratio_one, "first_update_kl_near_zero": kl_small,
            "headline": f"rollout {rows[-1]['rollout_tokens_per_s']:,.0f} tok/s, update {rows[-1]['update_s']:.1f} s; "
                        f"update 1 clip fraction {first['clip_fraction']}, KL/token {first['kl_per_token']:.2g}"}


# ----------------------------------------------------------------------------- 5. serving


def _stream(url: str, prompt: str, max_tokens: int) -> dict[str, float]:
    """One streamed chat request (stdlib HTTP, so the device needs no openai client): TTFT and tokens."""
    body = json.dumps({"model": "gpu-check", "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, tokens = None, 0
    with urllib.request.urlopen(req, timeout=300) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return {"ttft": (first or end) - t0, "tokens": tokens}


def _level(url: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    results: list[dict] = []
    lock = threading.Lock()
    todo = list(range(requests))

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            r = _stream(url, f"Tell me about item {i} of the list.", max_tokens)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = sorted(r["ttft"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "output_tokens": tokens,
            "output_tokens_per_s": round(tokens / wall, 1), "ttft_p50_s": round(ttft[len(ttft) // 2], 4),
            "ttft_max_s": round(ttft[-1], 4)}


def serving(ctx) -> dict[str, Any]:
    """`ilm serve`'s app on the device at 1/8/32 concurrent streamed clients; greedy equals `ilm generate`."""
    from ilm.model.generate import Sampling, generate
    from ilm.serve.app import build_app
    from ilm.serve.cli import ServerThread, load_engine

    ws = workspace(ctx)
    levels = (1, 2, 4) if ctx.dry else (1, 8, 32)
    max_tokens = 8 if ctx.dry else 64
    engine = load_engine(ws["actor"], max_batch=max(levels), device=ctx.device.type)
    rows = []
    try:
        with ServerThread(build_app(engine, "gpu-check")) as srv:
            prompt = ws["tok"].encode("def main(argv):", bos=True)
            body = json.dumps({"model": "gpu-check", "prompt": prompt, "max_tokens": max_tokens,
                               "temperature": 0}).encode()
            req = urllib.request.Request(srv.url + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            served = json.loads(urllib.request.urlopen(req, timeout=300).read())["choices"][0]["text"]
            ids = generate(engine.model, [prompt], Sampling(max_new_tokens=max_tokens, greedy=True,
                                                            stop_ids=tuple(engine.stop_ids)))[0]
            local = ws["tok"].decode(ids, skip_special=True)
            for clients in levels:
                _level(srv.url, clients, clients, max_tokens)  # warm-up (CUDA graphs, allocator)
                rows.append(_level(srv.url, clients, 2 * clients, max_tokens))
    finally:
        engine.stop()
    same = served == local
    return {"status": "pass" if same else "fail", "levels": rows, "greedy_equals_generate": same,
            "served_text": served[:200], "generate_text": local[:200], "max_tokens": max_tokens,
            "model": f"{'tiny' if ctx.dry else 'small'} preset, random weights, vocab 512",
            "headline": ", ".join(f"{r['clients']} cl {r['output_tokens_per_s']:,.0f} tok/s ttft {r['ttft_p50_s']:.3f}s"
                                  for r in rows) + f"; greedy = generate: {same}"}


# ----------------------------------------------------------------------------- 6. NIAH at 32k


def niah(ctx) -> dict[str, Any]:
    """One NIAH cell at 32k on the 1.8B-shaped random model in bf16: the long prefill and decode path runs
    (time, peak memory); a random model retrieves nothing, so there is no accuracy claim."""
    from ilm.eval.niah import Haystack, run_grid
    from ilm.model.generate import Sampling, generate

    tok = ByteTokenizer()
    length = 300 if ctx.dry else 32_768
    cfg = get_preset("tiny" if ctx.dry else "internlm2-1.8b", max_position_embeddings=length + 64)
    dtype = torch.float32 if ctx.dry else torch.bfloat16
    model = build_model(cfg, device=ctx.device, dtype=dtype, seed=0).eval()
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stops = tuple(tok.stop_ids)

    def answer(ids: list[int]) -> list[int]:
        return generate(model, [ids], Sampling(max_new_tokens=8, greedy=True, stop_ids=stops), keep_stop=True)[0]

    t0 = time.perf_counter()
    haystack = Haystack(tok, "\n\n".join(_stdlib_text(400)))
    result = run_grid(answer, tok, [length], [0.5], haystack=haystack)
    wall = time.perf_counter() - t0
    out = {"preset": "tiny" if ctx.dry else "internlm2-1.8b", "dtype": str(dtype), "length": length,
           "prompt_tokens": result["cells"][0]["prompt_tokens"], "answer_s": round(wall, 2),
           "hit": result["cells"][0]["hit"], "accuracy_claim": None}
    head = f"{out['prompt_tokens']:,}-token prompt answered in {wall:.1f} s"
    if ctx.device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        head += f", peak {out['peak_gib']} GiB"
    return {"status": "pass", **out, "headline": head}


# ----------------------------------------------------------------------------- 7. FSDP2, 2 processes


def fsdp_worker(run_dir: str, shards: str, device: str) -> None:
    """One rank of the two-process run (launched by torchrun): a few pretraining steps, FSDP2-sharded. On one
    GPU both ranks take device 0 (NCCL decides whether it allows that)."""
    from ilm.config import from_dict
    from ilm.train import pretrain

    if device == "cuda" and torch.cuda.device_count() < 2:
        os.environ["LOCAL_RANK"] = "0"
    cfg = from_dict(pretrain.PretrainConfig, {
        "run_dir": run_dir, "model": {"preset": "tiny", "overrides": {"vocab_size": 512}},
        "sources": [{"name": "web", "path": shards}], "stages": [{"name": "s", "window": 64, "fraction": 1.0}],
        "optim": {"warmup_steps": 1},
        "train": {"total_tokens": 64 * 4 * 3, "batch_tokens": 64 * 4, "micro_batch_rows": 2, "precision": "fp32",
                  "device": device, "fsdp": True, "checkpoint_every": 10**9, "eval_every": 10**9, "progress": False},
    })
    with mock.patch("ilm.train.metrics.Metrics.plot", return_value=None):  # no matplotlib needed on the device
        pretrain.train(cfg, resume="never")


def fsdp2(ctx) -> dict[str, Any]:
    """Two processes, FSDP2, NCCL on the GPU (gloo on CPU in the dry run): the loss must match one process."""
    shards = token_shards(ctx)
    dev = ctx.device.type
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "src"),
         os.environ.get("PYTHONPATH", "")]))
    fsdp_worker(str(ctx.tmp / "fsdp-1"), shards, dev)  # the one-process reference, in this process
    run_dir = ctx.tmp / "fsdp-2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "benchmarks.gpu_parts_system", str(run_dir), shards, dev]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=max(ctx.left() - 5, 10),
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        reason = next((ln for ln in tail if "Error:" in ln and "ChildFailedError" not in ln or "terminate called" in ln),
                      tail[-1] if tail else "")
        if dev == "cuda" and torch.cuda.device_count() < 2:
            return {"status": "skip", "reason": f"2 processes on one GPU refused: {reason.strip()[:300]}",
                    "stderr_tail": "\n".join(tail[-30:])}
        return {"status": "fail", "reason": f"2 processes exited {done.returncode}: {reason.strip()[:300]}",
                "stderr_tail": "\n".join(tail[-30:])}
    losses = {n: [json.loads(x)["loss"] for x in (ctx.tmp / f"fsdp-{n}" / "metrics.jsonl").read_text().splitlines()]
              for n in (1, 2)}
    diff = max(abs(a - b) for a, b in zip(losses[1], losses[2]))
    ok = diff < 1e-4
    return {"status": "pass" if ok else "fail", "losses": losses, "max_loss_diff": diff,
            "backend": "nccl" if dev == "cuda" else "gloo",
            "headline": f"2-process FSDP2 ({'nccl' if dev == 'cuda' else 'gloo'}) losses match 1 process "
                        f"within {diff:.1g}"}


if __name__ == "__main__":  # one rank of `fsdp2` (python -m benchmarks.gpu_parts_system RUN_DIR SHARDS DEVICE)
    from ilm.train.distributed import shutdown_world

    try:
        fsdp_worker(*sys.argv[1:4])
    finally:
        shutdown_world()  # leave the process group cleanly (gloo can abort at exit otherwise)
