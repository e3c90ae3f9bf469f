"""Model core, side by side with transformers.LlamaForCausalLM loaded from our own Llama export (same weights):

1. training step (forward + backward, next-token loss) tokens/s -- target >= 1.3x
2. batched greedy decoding tokens/s against `generate` -- target >= 2x
3. packed-document attention on CPU: one masked SDPA call vs per-document SDPA blocks (sets the CPU default)

On CUDA the same script runs GPU-sized configs in bf16. Each pair runs interleaved, several rounds, and the
best round of each is reported, so background load hits both alike.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from ilm.model import build_model, doc_ids_from_lens, get_preset, packed_batch, positions_from_doc_ids
from ilm.model.generate import Sampling, generate
from ilm.model.hf import save_checkpoint
from ilm.train.distributed import apply_compile
from ilm.train.losses import lm_loss, shift_labels

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_rate(fns: dict, work: float, device, rounds: int, reps: int) -> dict[str, float]:
    best = {name: 0.0 for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            _sync(device)
            best[name] = max(best[name], work * reps / (time.perf_counter() - t))
    return best


def _pair(preset: str, device, dtype, **overrides):
    from transformers import LlamaForCausalLM

    cfg = get_preset(preset, **overrides)
    ours = build_model(cfg, device=device, dtype=dtype, seed=0)
    path = tempfile.mkdtemp(prefix="ilm-bench-")
    save_checkpoint(ours, f"{path}/llama", fmt="llama")
    hf = LlamaForCausalLM.from_pretrained(f"{path}/llama", dtype=dtype).to(device)
    return cfg, ours, hf


def bench_train(preset: str, batch: int, seq: int, device, dtype, compile_layers: bool) -> dict:
    cfg, ours, hf = _pair(preset, device, dtype)
    ours.train(), hf.train()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    labels = shift_labels(ids)

    def step_ours(model=ours):
        loss = lm_loss(model(ids, return_hidden=True), model.output.weight, labels)
        loss.backward()
        return loss

    def step_hf():
        loss = hf(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss

    def step_ours_unfused():
        logits = ours(ids).float()
        loss = torch.nn.functional.cross_entropy(logits.view(-1, cfg.vocab_size), labels.view(-1))
        loss.backward()

    loss_ours, loss_hf = step_ours().item(), step_hf().item()
    fns = {"ilm (eager)": step_ours, "transformers LlamaForCausalLM": step_hf,
           "ilm (eager, unfused loss)": step_ours_unfused}
    if device.type == "cpu":  # bf16 autocast, both sides: what the CPU's bf16 matmul units give each
        def autocast(fn):
            def run():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return fn()
            return run

        fns["ilm (eager, bf16 autocast)"] = autocast(step_ours)
        fns["transformers (bf16 autocast)"] = autocast(step_hf)
    if compile_layers:
        compiled = build_model(cfg, device=device, dtype=dtype, seed=0).train()
        apply_compile(compiled)
        t = time.perf_counter()
        step_ours(compiled), step_ours(compiled)
        compile_s = time.perf_counter() - t
        fns["ilm (layers compiled)"] = lambda: step_ours(compiled)
    rounds, reps = (2, 1) if QUICK else (4, 2)
    rates = _best_rate(fns, batch * seq, device, rounds, reps)
    base = rates["transformers LlamaForCausalLM"]
    out = {
        "config": f"{preset} {str(dtype).removeprefix('torch.')} batch {batch} x seq {seq} on {device.type}",
        "loss_ours": loss_ours, "loss_hf": loss_hf,
        "tokens_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_vs_transformers": {k: round(v / base, 3) for k, v in rates.items()},
    }
    if compile_layers:
        out["compile_seconds"] = round(compile_s, 1)
    return out


def bench_decode(preset: str, batch: int, new_tokens: int, device, dtype) -> dict:
    cfg, ours, hf = _pair(preset, device, dtype)
    ours.eval(), hf.eval()
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(32, 128, (batch,), generator=g).tolist()
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in lens]
    P = max(lens)
    pad = cfg.pad_token_id
    ids = torch.tensor([[pad] * (P - n) + p for n, p in zip(lens, prompts)], device=device)
    mask = (torch.arange(P)[None] >= torch.tensor([P - n for n in lens])[:, None]).long().to(device)
    sampling = Sampling(max_new_tokens=new_tokens, greedy=True, stop_ids=())

    def run_ours():
        return generate(ours, prompts, sampling)

    def run_hf():
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        return out[:, P:].tolist()

    a, b = run_ours(), run_hf()
    agree = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb)) / (batch * new_tokens)
    rounds = 2 if QUICK else 4
    rates = _best_rate({"ilm generate": run_ours, "transformers generate": run_hf}, batch * new_tokens,
                       device, rounds, 1)
    return {
        "config": f"{preset} {str(dtype).removeprefix('torch.')} batch {batch}, prompts 32-127, "
                  f"{new_tokens} new tokens, greedy, on {device.type}",
        "greedy_token_agreement": round(agree, 4),
        "tokens_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio": round(rates["ilm generate"] / rates["transformers generate"], 3),
    }


def bench_packed_attention(device) -> dict:
    model = build_model(get_preset("small"), device=device, seed=0).eval()
    out = {}
    for name, lens in {"8 x 256": [256] * 8, "2 x 1024": [1024] * 2, "mixed 64..1024": [64, 128, 256, 512, 1024, 64]}.items():
        doc_lens = [lens] * 2
        ids = torch.randint(0, 8192, (2, sum(lens)), device=device)
        doc_ids = doc_ids_from_lens(doc_lens, device)
        pos = positions_from_doc_ids(doc_ids)
        fns = {}
        for backend in ("sdpa", "blocks"):
            batch = packed_batch(doc_ids, backend)
            fns[backend] = lambda batch=batch, ids=ids, pos=pos: model(ids, pos, batch)
        with torch.no_grad():
            rates = _best_rate(fns, ids.numel(), device, 2 if QUICK else 3, 1)
        out[name] = {k: round(v, 1) for k, v in rates.items()}
    return out


def gpu_checks(device) -> dict:
    """Correctness of the GPU-only paths: CUDA-graph decoding and FlexAttention packing (fp32)."""
    model = build_model(get_preset("small"), device=device, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 8192, (n,), generator=g).tolist() for n in (5, 40, 17, 64)]
    graphed = generate(model, prompts, Sampling(max_new_tokens=48, greedy=True, stop_ids=()))
    eager = generate(model, prompts, Sampling(max_new_tokens=48, greedy=True, stop_ids=(), cuda_graph=False))
    doc_lens = [[100, 300, 112], [512]]
    doc_ids = doc_ids_from_lens(doc_lens, device)
    ids = torch.randint(0, 8192, (2, 512), device=device)
    pos = positions_from_doc_ids(doc_ids)
    with torch.no_grad():
        logits = {b: model(ids, pos, packed_batch(doc_ids, b)) for b in ("sdpa", "blocks", "flex")}
    return {
        "cuda_graph_decode_equals_eager": graphed == eager,
        "packed_max_abs_diff_vs_sdpa": {b: float((v - logits["sdpa"]).abs().max()) for b, v in logits.items()},
    }


def _guarded(results: dict, name: str, fn, *args, **kwargs) -> None:
    """One failing measurement must not cost the others (device time is scarce)."""
    import traceback

    try:
        results[name] = fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - recorded and printed, the run goes on
        results[name] = {"error": f"{type(err).__name__}: {err}"}
        traceback.print_exc()
    print(name, results[name], flush=True)


def main() -> dict:
    results = {}
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        if os.environ.get("ILM_BENCH_ONLY") == "train":
            _guarded(results, "train_gpu", bench_train, "internlm2-1.8b", 4, 2048, dev, torch.bfloat16, True)
            _guarded(results, "decode_gpu_small_fp32", bench_decode, "small", 8, 128, dev, torch.float32)
            return results
        _guarded(results, "gpu_checks", gpu_checks, dev)
        _guarded(results, "decode_gpu_small", bench_decode, "small", 8, 128, dev, torch.bfloat16)
        _guarded(results, "decode_gpu_1.8b", bench_decode, "internlm2-1.8b", 8, 128, dev, torch.bfloat16)
        _guarded(results, "train_gpu", bench_train, "internlm2-1.8b", 4, 2048, dev, torch.bfloat16, True)
        return results
    cpu = torch.device("cpu")
    results["train_cpu"] = bench_train("small", 8, 512, cpu, torch.float32, compile_layers=not QUICK)
    print(results["train_cpu"])
    for preset in ("tiny", "small"):
        results[f"decode_cpu_{preset}"] = bench_decode(preset, 8, 128, cpu, torch.float32)
        print(results[f"decode_cpu_{preset}"])
    results["packed_attention_cpu"] = bench_packed_attention(cpu)
    print(results["packed_attention_cpu"])
    return results


if __name__ == "__main__":
    main()
