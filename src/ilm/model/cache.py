"""A preallocated KV cache for batched decoding.

Keys are stored already rotated. Under dynamic NTK the RoPE base changes with the sequence length once it
passes `max_position_embeddings`; full recompute would then rotate *every* key with the new base, so the
cache rotates its stored keys by the difference of the two angle tables (rotations compose) before the
step. That keeps cached decoding equal to recomputing from scratch at every length.
"""

from __future__ import annotations

import torch

from ilm.model.config import ModelConfig
from ilm.model.rope import Rope, apply_rope


class KVCache:
    def __init__(
        self, config: ModelConfig, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype
    ):
        shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.positions = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.max_len = max_len
        self.length = 0
        self._inv_freq: torch.Tensor | None = None  # the table the stored keys were rotated with

    def begin_step(self, rope: Rope, positions: torch.Tensor) -> None:
        T = positions.shape[1]
        if self.length + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; this step would need {self.length + T}")
        inv_freq = rope.inv_freq(positions)
        if rope.kind == "dynamic" and self.length and not torch.equal(inv_freq, self._inv_freq):
            delta = rope.angles(self.positions[:, : self.length], inv_freq - self._inv_freq)
            cos, sin = delta.cos()[:, None], delta.sin()[:, None]
            for k in self.k:
                old = k[:, :, : self.length]
                k[:, :, : self.length] = apply_rope(old.float(), cos, sin).to(k.dtype)
        self._inv_freq = inv_freq
        self.positions[:, self.length : self.length + T] = positions

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def end_step(self, T: int) -> None:
        self.length += T
