"""A preallocated KV cache for batched decoding: keys (already rotated) and values, per layer.

Dynamic NTK note: once a row is longer than `max_position_embeddings`, its RoPE base changes with every
new token, and a full recompute would re-rotate *every* earlier key and hence change every deeper layer's
hidden states. No cache of per-layer keys can reproduce that, so the generator rebuilds the cache with a
fresh prefill whenever a row's base changes (see `ilm.model.generate`); below the threshold the cache is
used as is.
"""

from __future__ import annotations

import torch

from ilm.model.config import ModelConfig


class KVCache:
    def __init__(
        self, config: ModelConfig, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype
    ):
        shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)
        # zeros, not empty: the static decode step attends over unwritten slots (masked), and masked
        # garbage that happens to be NaN would still poison the softmax-weighted sum
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.max_len = max_len
        self.length = 0
        # Static mode (CUDA graphs): write at this tensor index and attend over the whole buffer under a
        # mask, so every decode step has the same shapes and no host-side integers.
        self.index: torch.Tensor | None = None

    def reset(self) -> None:
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index is not None:
            self.k[layer].index_copy_(2, self.index, k)
            self.v[layer].index_copy_(2, self.index, v)
            return self.k[layer], self.v[layer]
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; this step would need {end}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, T: int) -> None:
        self.length += T
