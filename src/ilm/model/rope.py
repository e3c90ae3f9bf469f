"""Rotate-half rotary position embeddings with the HF InternLM2 scaling rules.

- plain: inv_freq = 1 / base ** (2i / dim)
- linear: positions are divided by `factor`
- dynamic NTK: only once a sequence is longer than `max_position_embeddings`, the base grows to
  base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))

Dynamic NTK has two rules past `max_position_embeddings` (below it both are plain RoPE, bit for bit):
- whole-sequence (HF's, a forward's default): every position of a row rotates with the base of the row's
  length (its largest position + 1, or `rope_len`), so a prompt scores the same in a padded batch as alone.
  No cache can follow it: one more token changes every layer's hidden states at every earlier position.
- causal (decoding with a cache): the query at position t attends with the base of length t + 1, its keys
  included -- what the model computed when it produced token t. A cache follows it exactly: keys are
  cached rotated with the trained base, and a query past the window re-rotates them by the difference of
  angles, key position x (inv_freq(t + 1) - inv_freq(trained)) (`KeyShift`; O(n) per token).
  `InternLM2.forward(..., causal_ntk=True)` is its full recompute.

Cos/sin are computed in float32; `apply_rope` casts them to the dtype of the q/k it rotates, so under
autocast the rotated q and k stay in the autocast dtype (bf16), as v is: the flash-attention kernel takes
only one dtype for all three (and HF InternLM2 rotates in that dtype too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def inv_freq_at(self, lengths: torch.Tensor) -> torch.Tensor:
        """Dynamic NTK: sequence lengths of any shape (...) -> (..., dim/2) frequencies, the base of each length.

        Computed in float64 then rounded, the same way for every length, so a length within the window gives
        exactly the trained base's frequencies (a shift of zero)."""
        exponents = self._exponents(lengths.device).double()
        seq_len = lengths.double()
        scale = (self.factor * seq_len / self.max_pos) - (self.factor - 1)
        base = torch.where(seq_len > self.max_pos, self.base * scale ** (self.dim / (self.dim - 2)), self.base)
        return (1.0 / (base[..., None] ** exponents)).float()

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
        seq_len = torch.as_tensor(seq_len, device=positions.device).expand(positions.shape[0])
        return self.inv_freq_at(seq_len[:, None])

    def angles(self, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
        """(B, T) integer positions -> (B, T, dim) float32 angles, halves duplicated (rotate-half).

        `inv_freq`: (dim/2,), (B, 1, dim/2) per row, or (B, T, dim/2) per position."""
        pos = positions.float()
        if self.kind == "linear":
            pos = pos / self.factor
        freqs = pos[..., None] * inv_freq
        return torch.cat((freqs, freqs), dim=-1)

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype, seq_len: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (B, 1, T, dim), ready to broadcast over heads (`seq_len`: see `inv_freq`)."""
        return _cos_sin(self.angles(positions, self.inv_freq(positions, seq_len)), dtype)

    def causal(self, positions: torch.Tensor, dtype: torch.dtype, rope_len: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, KeyRotation | None]:
        """Dynamic NTK over a cache: (cos, sin) for the queries, and how keys rotate (None: as the queries,
        no query is past the window): stored with the trained base, re-rotated in the attention.

        Queries take the causal rule (base of position + 1) or, with `rope_len` (B,), one base per row (the
        whole-sequence rule, for a chunked prefill that must equal one full forward)."""
        lengths = positions + 1 if rope_len is None else torch.as_tensor(rope_len, device=positions.device)[:, None]
        inv_q = self.inv_freq_at(lengths.expand(positions.shape[0], -1))
        inv_0 = self.inv_freq_at(torch.tensor(self.max_pos, device=positions.device))
        cos_q, sin_q = _cos_sin(self.angles(positions, inv_q), dtype)
        shift = inv_q - inv_0
        if not bool((shift != 0).any()):
            return cos_q, sin_q, None
        cos_k, sin_k = _cos_sin(self.angles(positions, inv_0), dtype)
        return cos_q, sin_q, KeyRotation(cos_k, sin_k, KeyShift(shift))


@dataclass
class KeyShift:
    """Re-rotation of keys cached with the trained base to each query's base: rotations in one plane add, so
    R(j w_q) k = R(j (w_q - w_0)) R(j w_0) k for key position j.

    `dw` (B, Tq, dim/2): w_q - w_0 per query (Tq = T) or per row (Tq = 1)."""

    dw: torch.Tensor
    # per row: the tables of the last key positions seen (every layer of one forward has the same keys)
    _memo: tuple | None = field(default=None, repr=False)

    def per_row(self) -> bool:
        return self.dw.shape[1] == 1

    def cos_sin(self, key_pos: torch.Tensor, start: int, end: int, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries [start, end) x key positions (B, S) -> cos, sin of shape (B, end - start, S, dim)."""
        memo = self.per_row() and self._memo
        if memo and memo[0].shape == key_pos.shape and bool(torch.equal(memo[0], key_pos)) and memo[1] == dtype:
            return memo[2], memo[3]
        ang = key_pos[:, None, :, None].float() * self.dw[:, start:end, None, :]
        cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)  # on the half, then duplicated (rotate-half)
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        if self.per_row():
            self._memo = (key_pos, dtype, cos, sin)
        return cos, sin


@dataclass
class KeyRotation:
    """Keys rotated with the trained base (`cos`, `sin`) and re-rotated by `shift` as each query attends.
    `positions`: the key positions when the keys are this forward's own (no cache)."""

    cos: torch.Tensor
    sin: torch.Tensor
    shift: KeyShift
    positions: torch.Tensor | None = None

    def key_positions(self, cache, k: torch.Tensor) -> torch.Tensor:
        """(B, S) positions of the S keys `k` the attention sees: this forward's own, the cache's
        `key_positions`, or (a cache without one: the server's slots) slot j = position j."""
        B, S = k.shape[0], k.shape[2]
        if cache is None:
            return self.positions.expand(B, S)
        own = getattr(cache, "key_positions", None)
        pos = own(S) if own is not None else torch.arange(S, device=k.device)[None]
        return pos.expand(B, S)


def _cos_sin(angles: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, T, dim); the result has x's dtype (cos/sin are cast to it, never x promoted to theirs)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin
