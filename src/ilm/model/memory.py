"""How long a context fits: a memory estimate instead of a constant length cap.

Dynamic NTK's base formula holds at any length, and plain RoPE may be run past its trained window on
purpose (extrapolation experiments), so the real limit on a context is memory. These estimates are
deliberately simple upper-bound-ish sums of the big tensors -- weights, KV cache sized to the request, the
activations of one prefill chunk or one training micro-batch -- compared with what the device has free:
`torch.cuda.mem_get_info` on GPU, `MemAvailable` of /proc/meminfo (or psutil) on CPU. When the estimate
does not fit, `check_fits` raises `ContextMemoryError` naming both numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ilm.model.attention import SHIFT_BLOCK_ELEMS
from ilm.model.config import ModelConfig

ACTIVATION_SAFETY = 2.0  # allocator slack, kernel workspaces, temporaries the sums below do not name


class ContextMemoryError(ValueError):
    """A requested context (prompt + new tokens, or a training window) whose estimate exceeds free memory."""


@dataclass(frozen=True)
class Estimate:
    """Bytes, by part; `resident` parts are already allocated when the check runs (loaded weights)."""

    weights: int = 0
    optimizer: int = 0  # gradients + optimizer state (training only)
    kv_cache: int = 0
    activations: int = 0
    resident: int = 0  # of the above, how much is already in memory (excluded from what must still fit)

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.kv_cache + self.activations

    @property
    def needed(self) -> int:
        """What must still be allocated."""
        return self.total - self.resident

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(*(getattr(self, f) + getattr(other, f) for f in
                          ("weights", "optimizer", "kv_cache", "activations", "resident")))

    def describe(self) -> str:
        parts = [(n, getattr(self, n)) for n in ("weights", "optimizer", "kv_cache", "activations")]
        return ", ".join(f"{n.replace('_', ' ')} {gib(b)}" for n, b in parts if b)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def available_bytes(device: torch.device | str) -> int:
    """Free memory on `device`: the CUDA allocator's view on GPU, the kernel's MemAvailable on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # blocks PyTorch's caching allocator holds but no tensor uses are free to this process too
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62  # unknown platform: do not refuse


def _layer_activation_elems(config: ModelConfig, tokens: int) -> int:
    """Elements alive at once inside one layer for `tokens` tokens (no grad): hidden copies, qkv, FFN."""
    qkv = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
    return tokens * (4 * config.hidden_size + qkv + 3 * config.intermediate_size)


def generation_estimate(
    config: ModelConfig, batch: int, total_len: int, chunk: int, dtype: torch.dtype = torch.float32,
    mask_keys: bool = True, weights_loaded: bool = True,
) -> Estimate:
    """Generating `batch` rows up to `total_len` positions (prompt + new tokens), prefilled `chunk` at a time.

    KV cache: 2 x layers x batch x kv_heads x head_dim x total_len. Activations: one chunk through one layer
    (layers run one after another, nothing kept), RoPE tables, a boolean chunk x keys mask when the backend
    takes one (`mask_keys`), and the last position's logits; times ACTIVATION_SAFETY. Under dynamic NTK past
    `max_position_embeddings`, the keys each query block re-rotates to its own base (`attend_shifted`: at most
    SHIFT_BLOCK_ELEMS, or one query's worth) and one layer's keys rotated by half.
    """
    b = dtype_bytes(dtype)
    weights = config.num_params() * b
    kv = 2 * config.num_layers * batch * config.num_kv_heads * config.head_dim * total_len * b
    tokens = batch * min(chunk, total_len)
    act = _layer_activation_elems(config, tokens) * b
    act += 2 * tokens * config.head_dim * 4  # cos, sin (float32)
    act += batch * min(chunk, total_len) * total_len if mask_keys else 0
    act += batch * config.vocab_size * 4
    act += batch * total_len * 9 * 2  # token ids (int64) + validity (bool), and their per-step copies
    if config.rope_scaling_type == "dynamic" and total_len > config.max_position_embeddings:
        D, KV = config.head_dim, config.num_kv_heads
        block = max(SHIFT_BLOCK_ELEMS, batch * total_len * (2 * KV * D + 2 * D + config.num_heads))
        act += block * 4 + 2 * batch * KV * total_len * D * b
    return Estimate(weights=weights, kv_cache=kv, activations=int(act * ACTIVATION_SAFETY),
                    resident=weights if weights_loaded else 0)


def training_estimate(
    config: ModelConfig, rows: int, window: int, param_dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype = torch.float32, shards: int = 1, dense_mask: bool = False,
    checkpointing: bool = False,
) -> Estimate:
    """One training micro-batch of `rows` x `window` tokens with AdamW.

    Weights, gradients and two AdamW moments are sharded over `shards` processes (FSDP); activations kept for
    the backward are about 12 hidden-sized + 4 FFN-sized + 2 qkv-sized tensors per token per layer, plus the
    output head's logits for one 4096-row loss chunk (`ilm.train.losses.lm_loss`) and, for the plain masked
    SDPA backend only, a window x window boolean mask per row (the document-mask kernels keep none). With
    activation `checkpointing` each layer keeps only its input, and one layer's activations live at a time.
    """
    pb, cb = dtype_bytes(param_dtype), dtype_bytes(compute_dtype)
    n = config.num_params()
    weights = n * pb // shards
    optimizer = n * (pb + 8) // shards
    tokens = rows * window
    qkv = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
    per_layer = tokens * (12 * config.hidden_size + 4 * config.intermediate_size + 2 * qkv) * cb
    if checkpointing:
        act = config.num_layers * tokens * config.hidden_size * cb + per_layer
    else:
        act = config.num_layers * per_layer
    act += tokens * config.hidden_size * 4 * 2
    act += min(tokens, 4096) * config.vocab_size * 4 * 2
    act += rows * window * window if dense_mask else 0
    return Estimate(weights=weights, optimizer=optimizer, activations=int(act * ACTIVATION_SAFETY))


def check_fits(estimate: Estimate, device: torch.device | str, what: str, hint: str = "") -> None:
    """Raise ContextMemoryError when `estimate.needed` exceeds the free memory of `device`."""
    free = available_bytes(device)
    if estimate.needed > free:
        raise ContextMemoryError(
            f"{what} needs an estimated {gib(estimate.needed)} ({estimate.describe()}"
            f"{'; weights already loaded' if estimate.resident else ''}) but only {gib(free)} is available on "
            f"{torch.device(device).type}{'; ' + hint if hint else ''}"
        )


def check_training(
    config: ModelConfig, rows: int, window: int, device: torch.device | str, precision: str, shards: int,
    what: str, hint: str = "lower the window or micro-batch rows, turn on activation_checkpointing, or use more "
                           "processes", checkpointing: bool = False, weight_copies: int = 0,
) -> Estimate:
    """`training_estimate` for a trainer's micro-batch (fp32 master weights; bf16 activations under bf16),
    checked against the free memory of `device`; returns the estimate. `weight_copies`: further fp32 copies of
    the (sharded) weights the trainer keeps, e.g. the init weights a WiSE-FT export averages back in."""
    compute = torch.bfloat16 if precision == "bf16" else torch.float32
    est = training_estimate(config, rows, window, torch.float32, compute, max(shards, 1), checkpointing=checkpointing)
    est = replace(est, weights=est.weights + weight_copies * config.num_params() * 4 // max(shards, 1))
    check_fits(est, device, what, hint)
    return est
