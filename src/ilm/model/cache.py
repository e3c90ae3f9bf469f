"""A preallocated KV cache for batched decoding: keys (rotated with the trained RoPE base) and values, per layer.

Dynamic NTK note: past `max_position_embeddings` a row's RoPE base changes with every new token. Keys stay
cached with the trained base, and each query re-rotates them to its own base as it attends (the causal
rule, `ilm.model.rope`), so the cache never goes stale. For that the attention needs each key slot's
position: `key_positions`, the slot index minus the row's left padding (`offset`). Any other cache the
model is given (the server's) may define `key_positions(S) -> (B, S)`; without it slot j is position j.
(Under the whole-sequence rule -- every earlier position rotated with the newest length's base -- no cache
can be exact: one more token changes every layer's hidden states at every earlier position.)
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
        # (B,) left-padding slots per row: slot j holds position j - offset (None: no padding)
        self.offset: torch.Tensor | None = None

    def key_positions(self, S: int) -> torch.Tensor:
        """(B, S) positions of key slots [0, S) (pad slots get negative ones; the attention masks them)."""
        slots = torch.arange(S, device=self.k[0].device)[None]
        B = self.k[0].shape[0]
        return (slots.expand(B, S) if self.offset is None else slots - self.offset[:, None])

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
