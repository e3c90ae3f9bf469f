"""`benchmarks.gpu_check` parts 1-3: the model's CUDA paths, bf16 decode agreement, training throughput.

Every part takes the check's `Context` and returns {"status": "pass" | "fail", "headline": one line, ...
figures}. Shapes are the GPU's unless `ctx.dry` (then tiny, on CPU, in seconds).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from ilm.model import build_model, doc_ids_from_lens, get_preset, packed_batch, positions_from_doc_ids
from ilm.model import generate as gen
from ilm.model.cache import KVCache
from ilm.model.generate import Sampling, generate, greedy_recompute, prefill

FP32_TOL, BF16_TOL = 1e-3, 5e-2  # max |logit diff| relative to max |reference logit|


def _copy(model, device: torch.device, dtype: torch.dtype):
    """The same weights on another device / dtype (the reference stays on CPU in fp32)."""
    other = build_model(model.config, device="meta")
    other = other.to(dtype).to_empty(device=device)
    other.load_state_dict({k: v.to(device, dtype) for k, v in model.state_dict().items()})
    return other.eval()


def _compare(ref: torch.Tensor, got: torch.Tensor, tol: float) -> dict[str, Any]:
    """Logit error relative to the reference's scale, and greedy ids wherever the reference is not a near tie."""
    ref, got = ref.float().cpu(), got.float().cpu()
    diff = (ref - got).abs().max().item()
    scale = ref.abs().max().item() or 1.0
    top2 = ref.topk(2, dim=-1).values
    decided = (top2[..., 0] - top2[..., 1]) > 2 * diff  # a gap no error this size can flip
    same = ref.argmax(-1) == got.argmax(-1)
    ok = diff <= tol * scale and bool(same[decided].all())
    return {"max_abs_diff": diff, "rel_diff": round(diff / scale, 6), "tol": tol,
            "argmax_agree": round(same.float().mean().item(), 4), "ok": ok}


def cuda_paths(ctx) -> dict[str, Any]:
    """Flash / SDPA / blocks / flex on packed documents, chunked flex prefill, CUDA-graph decode, dynamic NTK,
    each against the CPU fp32 reference on a small model."""
    dev = ctx.device
    cfg = get_preset("tiny" if ctx.dry else "small")
    ref = build_model(cfg, seed=0).eval()
    checks: dict[str, Any] = ctx.partial.setdefault("checks", {})
    lens = [[20, 30, 14], [64]] if ctx.dry else [[100, 300, 112], [512]]
    doc_ids = doc_ids_from_lens(lens)
    ids = torch.randint(3, cfg.vocab_size, doc_ids.shape, generator=torch.Generator().manual_seed(0))
    pos = positions_from_doc_ids(doc_ids)
    with torch.inference_mode():
        want = ref(ids, pos, packed_batch(doc_ids, "sdpa"))
    backends = ["sdpa", "blocks", "flex"]
    try:
        import flash_attn  # noqa: F401

        backends.append("flash")
    except ImportError:
        checks["flash"] = "skipped: flash-attn is not installed on this machine"
    models = {dt: _copy(ref, dev, dt) for dt in (torch.float32, torch.bfloat16)}
    for dt, model in models.items():
        name = str(dt).removeprefix("torch.")
        for backend in backends:
            if backend == "flash" and dt == torch.float32:
                continue  # flash-attn takes half precision only
            if backend == "flash" and dev.type != "cuda":
                continue
            d_ids = doc_ids.to(dev)
            with torch.inference_mode():
                got = model(ids.to(dev), pos.to(dev), packed_batch(d_ids, backend))
            checks[f"packed_{backend}_{name}"] = _compare(want, got, FP32_TOL if dt == torch.float32 else BF16_TOL)
    # chunked prefill (flex block masks over the preallocated cache) vs one prefill, left-padded rows
    lengths = [40, 25] if ctx.dry else [300, 180]
    chunk = 16 if ctx.dry else 64
    P = max(lengths)
    g = torch.Generator().manual_seed(1)
    tokens = torch.full((2, P), cfg.pad_token_id, dtype=torch.long)
    valid = torch.zeros(2, P, dtype=torch.bool)
    for i, n in enumerate(lengths):
        tokens[i, P - n:] = torch.randint(3, cfg.vocab_size, (n,), generator=g)
        valid[i, P - n:] = True
    ref_cache = KVCache(cfg, 2, P, torch.device("cpu"), torch.float32)
    want_last = prefill(ref, tokens, valid, ref_cache, P, backend="sdpa")
    for dt, model in models.items():
        name = str(dt).removeprefix("torch.")
        cache = KVCache(cfg, 2, P + 8, dev, dt)  # room past the prompt, as generation allocates
        got = prefill(model, tokens.to(dev), valid.to(dev), cache, chunk, backend="flex")
        checks[f"chunked_prefill_flex_{name}"] = _compare(want_last, got, FP32_TOL if dt == torch.float32 else BF16_TOL)
    # CUDA-graph decode vs eager (on CPU: the same static step run eagerly)
    prompts = [tokens[i, P - n:].tolist() for i, n in enumerate(lengths)]
    steps = 8 if ctx.dry else 48
    sampling = Sampling(max_new_tokens=steps, greedy=True, stop_ids=())
    ref_ids = generate(ref, prompts, sampling)
    for dt, model in models.items():
        name = str(dt).removeprefix("torch.")
        eager = generate(model, prompts, Sampling(max_new_tokens=steps, greedy=True, stop_ids=(), cuda_graph=False))
        with mock.patch.object(gen, "_STATIC_ON_CPU", dev.type != "cuda"):
            graphed = generate(model, prompts, sampling)
        # the graphed step attends over the whole cache under a key mask, eager over the filled part: in bf16
        # the kernels may sum in another order, so a flip at a near tie is allowed (and reported)
        div = _divergences(graphed, eager, prompts, models[torch.float32], model)
        row = {"graph_equals_eager": graphed == eager, "divergences": div,
               "ok": graphed == eager or dt != torch.float32 and all(d["tie"] for d in div)}
        if dt == torch.float32:
            div_cpu = _divergences(graphed, ref_ids, prompts, ref, model)
            row.update(equals_cpu_fp32=graphed == ref_ids, divergences_vs_cpu=div_cpu)
            row["ok"] = row["ok"] and all(d["tie"] for d in div_cpu)
        checks[f"cuda_graph_decode_{name}"] = row
    # dynamic NTK past max_position_embeddings: the cached generator against full recompute on CPU fp32
    ntk_cfg = cfg.replace(max_position_embeddings=32 if ctx.dry else 256,
                          rope_scaling={"type": "dynamic", "factor": 2.0})
    ntk_ref = build_model(ntk_cfg, seed=0).eval()
    prompt = prompts[0][: (28 if ctx.dry else 240)]
    new = 12 if ctx.dry else 40
    want_ids = greedy_recompute(ntk_ref, prompt, new)
    ntk_dev = _copy(ntk_ref, dev, torch.float32)
    got_ids = generate(ntk_dev, [prompt], Sampling(max_new_tokens=new, greedy=True, stop_ids=()))[0]
    div = _divergences([got_ids], [want_ids], [prompt], ntk_ref, ntk_dev)
    checks["dynamic_ntk_fp32"] = {"past_max_position": len(prompt) + new - ntk_cfg.max_position_embeddings,
                                  "equals_cpu_recompute": got_ids == want_ids, "divergences": div,
                                  "ok": all(d["tie"] for d in div)}
    failed = [k for k, v in checks.items() if isinstance(v, dict) and not v["ok"]]
    ran = sum(isinstance(v, dict) for v in checks.values())
    worst = max((v["rel_diff"] for v in checks.values() if isinstance(v, dict) and "rel_diff" in v), default=0)
    return {"status": "fail" if failed else "pass", "failed": failed, "checks": checks, "preset": "tiny" if ctx.dry else "small",
            "headline": f"{ran - len(failed)}/{ran} paths match CPU fp32; worst rel logit diff {worst:.2g}"
                        + (f"; FAILED: {', '.join(failed)}" if failed else "")}


# ----------------------------------------------------------------------------- 2. bf16 decode agreement


def _llama_twin(model, dtype: torch.dtype):
    """transformers' LlamaForCausalLM with `model`'s weights (ilm's Llama export, in memory: a 1.8B model
    through the disk would cost the part's budget), on the model's device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ilm.model.hf import config_to_hf, to_llama

    hf_cfg = {k: v for k, v in config_to_hf(model.config, "llama").items() if k not in ("architectures", "model_type")}
    state = dict(model.state_dict())
    state["output.weight"] = model.head_weight().detach()  # NormHead: the export writes normalised rows
    with torch.device(model.output.weight.device):
        hf = LlamaForCausalLM(LlamaConfig(**hf_cfg)).to(dtype)
    hf.load_state_dict({k: v.to(dtype) for k, v in to_llama(state, model.config).items()})
    return hf.eval()


def _hf_greedy(hf, prompts: list[list[int]], new: int, pad: int, device) -> list[list[int]]:
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=pad)
    return out[:, P:].tolist()


def _divergences(a: list[list[int]], b: list[list[int]], prompts, ref, other) -> list[dict[str, Any]]:
    """At each row's first differing token: the reference model's top-2 margin there, the gap between the
    reference's logits of the two chosen tokens, and how far `other`'s logits are from the reference's at
    that position (its rounding noise: bf16 against fp32, or one device against another).

    A divergence is a tie when the gap is within that noise: rounding alone can flip the choice. A gap well
    above it is a defect to look for.
    """
    out = []
    for row, (x, y, p) in enumerate(zip(a, b, prompts)):
        k = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), None)
        if k is None:
            continue
        with torch.inference_mode():
            lr_ = ref(torch.tensor([p + x[:k]], device=ref.output.weight.device), last_only=True)[0, -1].float().cpu()
            lo = other(torch.tensor([p + x[:k]], device=other.output.weight.device), last_only=True)[0, -1].float().cpu()
        top2 = lr_.topk(2).values
        noise = (lr_ - lo).abs().max().item()
        gap = abs(lr_[x[k]] - lr_[y[k]]).item()
        out.append({"row": row, "step": k, "top2_margin": round((top2[0] - top2[1]).item(), 6),
                    "gap": round(gap, 6), "noise": round(noise, 6), "logit_scale": round(lr_.abs().max().item(), 4),
                    "tie": gap <= noise})
    return out


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    n = sum(len(r) for r in a)
    return round(sum(s == t for x, y in zip(a, b) for s, t in zip(x, y)) / max(n, 1), 4)


def bf16_decode(ctx) -> dict[str, Any]:
    """The same greedy decode in fp32 and bf16, ilm and transformers: agreeing tokens, and why they diverge."""
    dev = ctx.device
    presets = ctx.cache.get("bf16_presets") or ([("tiny", 2, 8)] if ctx.dry else
                                                [("small", 8, 128), ("internlm2-1.8b", 8, 128)])
    results: dict[str, Any] = ctx.partial.setdefault("results", {})
    try:
        from transformers import LlamaForCausalLM
    except Exception as err:  # noqa: BLE001 - ilm's own comparison still runs
        LlamaForCausalLM = None
        results["transformers"] = f"skipped: transformers not importable ({type(err).__name__})"
    all_ties, hf_fp32_exact = True, True
    for preset, batch, new in presets:
        if ctx.left() < 15 and results:
            results[preset] = "skipped: the part's budget is spent"
            continue
        cfg = get_preset(preset)
        g = torch.Generator().manual_seed(0)
        lens = torch.randint(8, 17, (batch,), generator=g).tolist() if ctx.dry else \
            torch.randint(32, 128, (batch,), generator=g).tolist()
        prompts = [[cfg.bos_token_id] + torch.randint(3, cfg.vocab_size, (n - 1,), generator=g).tolist() for n in lens]
        m32 = build_model(cfg, device=dev, seed=0).eval()
        m16 = _copy(m32, dev, torch.bfloat16)
        sampling = Sampling(max_new_tokens=new, greedy=True, stop_ids=())
        outs = {"ilm fp32": generate(m32, prompts, sampling), "ilm bf16": generate(m16, prompts, sampling)}
        if LlamaForCausalLM is not None:
            for dt, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                hf = _llama_twin(m32, dt)
                outs[f"transformers {name}"] = _hf_greedy(hf, prompts, new, cfg.pad_token_id, dev)
                del hf
        pairs = [("ilm bf16", "ilm fp32"), ("transformers bf16", "transformers fp32"),
                 ("ilm bf16", "transformers bf16"), ("ilm fp32", "transformers fp32")]
        rows = {}
        for a, b in pairs:
            if a not in outs or b not in outs:
                continue
            div = _divergences(outs[a], outs[b], prompts, m32, m16)
            rows[f"{a} vs {b}"] = {"agreement": _agreement(outs[a], outs[b]), "divergences": div,
                                   "first_divergence_steps": [d["step"] for d in div],
                                   "all_ties": all(d["tie"] for d in div)}
            all_ties &= rows[f"{a} vs {b}"]["all_ties"]
        if "transformers fp32" in outs:
            hf_fp32_exact &= rows["ilm fp32 vs transformers fp32"]["all_ties"]
        results[preset] = {"batch": batch, "new_tokens": new, "prompt_lengths": lens, "pairs": rows}
        del m32, m16
    bits = []
    for preset, r in results.items():
        if isinstance(r, dict):
            for pair, v in r["pairs"].items():
                if pair.startswith("ilm bf16 vs"):
                    bits.append(f"{preset} {pair}: {v['agreement']:.0%}")
    ok = all_ties and hf_fp32_exact
    return {"status": "pass" if ok else "fail", "results": results,
            "headline": "; ".join(bits[:2]) + ("; every divergence a bf16 tie" if all_ties else
                                               "; a divergence ABOVE bf16 noise (defect)")}


# ----------------------------------------------------------------------------- 3. training throughput


def _train_once(ctx, preset: str, window: int, rows: int, steps: int, ckpt: bool, shards: str) -> dict[str, Any]:
    """`ilm.train.pretrain.train` for a few steps; the checkpoint, export and plot it writes at its end are
    skipped (a 1.8B DCP checkpoint is ~22 GB: a minute of device time that measures the disk, not training)."""
    from ilm.config import from_dict
    from ilm.model.memory import training_estimate
    from ilm.train import pretrain
    from ilm.train.metrics import peak_flops

    dev = ctx.device
    run_dir = ctx.tmp / f"train-{window}"
    precision = "fp32" if ctx.dry else "bf16"
    cfg = from_dict(pretrain.PretrainConfig, {
        "run_dir": str(run_dir), "model": {"preset": preset, "overrides": {"max_position_embeddings": max(window, 4096)}},
        "sources": [{"name": "web", "path": shards}],
        "stages": [{"name": "check", "window": window, "fraction": 1.0}],
        "optim": {"warmup_steps": 1},
        "train": {"total_tokens": window * rows * steps, "batch_tokens": window * rows, "micro_batch_rows": rows,
                  "precision": precision, "device": dev.type, "compile": not ctx.dry, "document_masks": True,
                  "activation_checkpointing": ckpt, "checkpoint_every": 10**9, "eval_every": 10**9,
                  "progress": False, "peak_flops": None if dev.type == "cuda" else 1e12},
    })
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with mock.patch.object(pretrain.checkpoint, "save"), mock.patch.object(pretrain, "export", return_value=run_dir), \
            mock.patch("ilm.train.metrics.Metrics.plot", return_value=None):  # no matplotlib needed on the device
        pretrain.train(cfg, resume="never")
    wall = time.perf_counter() - t0
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    warm = metrics[len(metrics) // 2:] or metrics  # the first steps compile
    mcfg = get_preset(preset, max_position_embeddings=max(window, 4096))
    est = training_estimate(mcfg, rows, window, torch.float32, torch.bfloat16 if precision == "bf16" else torch.float32,
                            1, checkpointing=ckpt)
    out = {"preset": preset, "window": window, "rows": rows, "steps": len(metrics), "precision": precision,
           "activation_checkpointing": ckpt, "compiled": not ctx.dry, "wall_s": round(wall, 1),
           "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in warm), 1),
           "first_step_s": round(window * rows / metrics[0]["tokens_per_s"], 2),
           "final_loss": round(metrics[-1]["loss"], 4), "estimate_gib": round(est.total / 2**30, 2)}
    if "mfu" in warm[0] and peak_flops(dev):
        out["mfu"] = round(statistics.median(r["mfu"] for r in warm), 4)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        out["peak_gib"] = round(peak / 2**30, 2)
        out["peak_over_estimate"] = round(peak / est.total, 3)
    return out


def training(ctx) -> dict[str, Any]:
    """internlm2-1.8b, packed documents, bf16, compiled, at window 4k and 32k with matched tokens per step."""
    from benchmarks.bench_pretrain import synthetic_shards
    from ilm.model.memory import available_bytes, training_estimate

    preset = "tiny" if ctx.dry else "internlm2-1.8b"
    short, long_ = (64, 256) if ctx.dry else (4096, 32768)
    tokens = long_  # per step, both windows
    steps = 3 if ctx.dry else 6
    cfg = get_preset(preset, max_position_embeddings=long_)
    shards = synthetic_shards(ctx.tmp / "shards", cfg.vocab_size, 400 if ctx.dry else 3000, 40 if ctx.dry else 1200)
    ckpt = False
    if ctx.device.type == "cuda":  # checkpoint activations in both runs when the long window needs it
        est = training_estimate(cfg, 1, long_, torch.float32, torch.bfloat16, 1)
        ckpt = est.total > 0.9 * available_bytes(ctx.device)
    ctx.partial["activation_checkpointing"] = ckpt
    runs: dict[str, Any] = ctx.partial.setdefault("runs", {})
    for window in (short, long_):
        runs[str(window)] = _train_once(ctx, preset, window, tokens // window, steps, ckpt, shards)
    s, lg = runs[str(short)], runs[str(long_)]
    ratio = round(lg["tokens_per_s"] / s["tokens_per_s"], 3)
    fits = all(r.get("peak_over_estimate", 0) <= 1.0 for r in runs.values())
    head = (f"{preset} tok/s {s['tokens_per_s']:,.0f} @{short} vs {lg['tokens_per_s']:,.0f} @{long_} "
            f"(ratio {ratio:.0%})")
    if "mfu" in s:
        head += f"; MFU {s['mfu']:.0%} / {lg['mfu']:.0%}"
    if "peak_gib" in s:
        head += f"; peak {s['peak_gib']}/{lg['peak_gib']} GiB vs est {s['estimate_gib']}/{lg['estimate_gib']}"
    return {"status": "pass" if fits else "fail", "runs": runs, "long_over_short": ratio,
            "seed_claim_long_over_short": 0.6, "estimate_is_upper_bound": fits, "headline": head}


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
