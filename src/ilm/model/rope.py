"""Rotate-half rotary position embeddings with the HF InternLM2 scaling rules.

- plain: inv_freq = 1 / base ** (2i / dim)
- linear: positions are divided by `factor`
- dynamic NTK: only once a sequence is longer than `max_position_embeddings`, the base grows to
  base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))

Under dynamic NTK each row uses its own length (its largest position + 1, or the length passed explicitly
for a forward that covers only part of the sequence: a prefill chunk), so a prompt decodes the same
in a padded batch as alone. Cos/sin are computed in float32; `apply_rope` casts them to the dtype of the
q/k it rotates, so under autocast the rotated q and k stay in the autocast dtype (bf16), as v is: the
flash-attention kernel takes only one dtype for all three (and HF InternLM2 rotates in that dtype too).
"""

from __future__ import annotations

import torch

from ilm.model.config import ModelConfig


class Rope:
    """Computes cos/sin tables for arbitrary per-row positions; holds no per-sequence state."""

    def __init__(self, config: ModelConfig):
        self.dim = config.head_dim
        self.base = float(config.rope_theta)
        self.kind = config.rope_scaling_type
        self.factor = config.rope_scaling_factor
        self.max_pos = config.max_position_embeddings

    def effective_base(self, seq_len: int) -> float:
        """The HF InternLM2 formula, for one sequence length."""
        if self.kind == "dynamic" and seq_len > self.max_pos:
            scale = (self.factor * seq_len / self.max_pos) - (self.factor - 1)
            return self.base * scale ** (self.dim / (self.dim - 2))
        return self.base

    def _exponents(self, device: torch.device | None) -> torch.Tensor:
        return torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim

    def inv_freq(self, positions: torch.Tensor, seq_len: torch.Tensor | None = None) -> torch.Tensor:
        """(dim/2,) frequencies, or (B, 1, dim/2) per row under dynamic NTK.

        `seq_len` (B,) is the full length each row's sequence has; default its largest position + 1. A prefill
        chunk or a decode step sees only part of the sequence, so it must pass the whole length explicitly to
        rotate with the same base as one full forward would.
        """
        exponents = self._exponents(positions.device)
        if self.kind != "dynamic":
            return 1.0 / (self.base**exponents)
        if seq_len is None:
            seq_len = positions.amax(dim=-1) + 1
        seq_len = torch.as_tensor(seq_len, device=positions.device).double().expand(positions.shape[0])
        scale = (self.factor * seq_len / self.max_pos) - (self.factor - 1)
        base = torch.where(seq_len > self.max_pos, self.base * scale ** (self.dim / (self.dim - 2)), self.base)
        return (1.0 / (base[:, None, None] ** exponents.double())).float()

    def angles(self, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
        """(B, T) integer positions -> (B, T, dim) float32 angles, halves duplicated (rotate-half)."""
        pos = positions.float()
        if self.kind == "linear":
            pos = pos / self.factor
        freqs = pos[..., None] * inv_freq
        return torch.cat((freqs, freqs), dim=-1)

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype, seq_len: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (B, 1, T, dim), ready to broadcast over heads (`seq_len`: see `inv_freq`)."""
        emb = self.angles(positions, self.inv_freq(positions, seq_len))
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, T, dim); the result has x's dtype (cos/sin are cast to it, never x promoted to theirs)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin
