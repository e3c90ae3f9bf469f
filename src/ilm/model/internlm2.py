"""The InternLM2 decoder, top to bottom.

Llama-style: RMSNorm -> GQA attention with a packed `wqkv` -> residual -> RMSNorm -> SiLU-gated FFN ->
residual; untied output head; no biases. Parameter names are exactly HF InternLM2's, so an HF state dict
loads without renaming. Parallelism, compilation and checkpoint conversion are applied from outside
(`ilm.train.distributed`, `ilm.model.hf`), never here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ilm.model.attention import AttnBatch, attend, attend_shifted
from ilm.model.cache import KVCache
from ilm.model.config import ModelConfig
from ilm.model.init import init_normal_, local_part
from ilm.model.rope import KeyRotation, Rope, apply_rope
from ilm.train.losses import lm_loss


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the activation dtype, as the HF reference does.
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.group = config.group_size
        # Rows grouped per KV head: [q_1 .. q_g, k, v], each head_dim rows (docs/recipe.md, Model).
        self.wqkv = nn.Linear(config.hidden_size, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: AttnBatch,
        cache: KVCache | None = None,
        layer: int = 0,
        keys: KeyRotation | None = None,
    ) -> torch.Tensor:
        """`keys`: how keys rotate when not as the queries do (dynamic NTK past the window; `Rope.causal`)."""
        B, T, _ = x.shape
        qkv = self.wqkv(x).view(B, T, self.n_kv, self.group + 2, self.head_dim)
        q = qkv[:, :, :, : self.group].reshape(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = qkv[:, :, :, self.group].transpose(1, 2)
        v = qkv[:, :, :, self.group + 1].transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin) if keys is None else apply_rope(k, keys.cos, keys.sin)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        if keys is None:
            out = attend(q, k, v, batch)
        else:
            out = attend_shifted(q, k, v, batch, keys.shift, keys.key_positions(cache, k))
        return self.wo(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, batch, cache=None, layer=0, keys=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, batch, cache, layer, keys)
        return x + self.feed_forward(self.ffn_norm(x))


class Backbone(nn.Module):
    """HF's `model.` prefix: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class InternLM2(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.rope = Rope(config)
        self.model = Backbone(config)
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> InternLM2:
        """Norms to one, every other matrix N(0, initializer_range), in place and shard by shard: works on the
        whole model and on an FSDP2-sharded one alike, with the same values (see `ilm.model.init`)."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                local_part(p)[0].fill_(1.0)
            else:
                init_normal_(p, name, std, seed)
        return self

    def head_weight(self) -> torch.Tensor:
        """The output head's (V, D) weight as the forward uses it: rows L2-normalised under `norm_head`.

        The normalisation is part of the graph (gradients flow through it), in training and inference alike,
        as InternLM's NormHead does; the export writes these rows (`ilm.model.hf.save_checkpoint`).
        """
        w = self.output.weight
        return F.normalize(w, dim=1) if self.config.norm_head else w

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        batch: AttnBatch | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        return_hidden: bool = False,
        labels: torch.Tensor | None = None,
        rope_len: torch.Tensor | None = None,
        causal_ntk: bool = False,
    ) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V), or (B, 1, V) with `last_only`.

        `positions` restart per document for packed rows (see `ilm.model.attention`); `batch` carries the
        attention pattern (default: causal over each row); `cache` makes this a prefill or decode step.
        With `labels`, returns the mean next-token loss instead, computed inside the forward so that a
        sharded (FSDP) output head is gathered while it is used. `rope_len` (B,): the full length of each
        row's sequence, for dynamic NTK's base when this forward covers only part of it (a prefill chunk);
        default: the largest position + 1. With right-padded rows, pass each row's real length: its scores
        then do not depend on its batch neighbours.

        Dynamic NTK with a `cache` and no `rope_len`, or with `causal_ntk`, follows the causal rule (each query
        with the base of its own position + 1, `ilm.model.rope`): exact over a cache at any length, so this is
        the generator's rule; `causal_ntk` without a cache is its full recompute. Within
        `max_position_embeddings` every rule is plain RoPE.
        """
        B, T = input_ids.shape
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        h = self.model.tok_embeddings(input_ids)
        keys = None
        if causal_ntk and rope_len is not None:
            raise ValueError("pass rope_len (one base per row) or causal_ntk (one base per position), not both")
        if self.rope.kind == "dynamic" and (cache is not None or causal_ntk):
            cos, sin, keys = self.rope.causal(positions, h.dtype, None if causal_ntk else rope_len)
            if keys is not None and cache is None:
                keys.positions = positions
        else:
            cos, sin = self.rope.cos_sin(positions, h.dtype, rope_len)
        batch = batch or AttnBatch()
        for i, layer in enumerate(self.model.layers):
            h = layer(h, cos, sin, batch, cache, i, keys)
        if cache is not None:
            cache.advance(T)
        if last_only:
            h = h[:, -1:]
        h = self.model.norm(h)
        if labels is not None:
            return lm_loss(h, self.head_weight(), labels)
        if return_hidden:
            return h
        return F.linear(h, self.head_weight()) if self.config.norm_head else self.output(h)


def build_model(
    config: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int | None = 0
) -> InternLM2:
    """A randomly initialised model; on the meta device, shapes only (for counting, and for sharding before
    the weights exist: `ilm.train.run.materialise`). `seed=None` draws the seed from torch's global RNG."""
    with torch.device("meta"):
        model = InternLM2(config).to(dtype)
    if torch.device(device).type == "meta":
        return model
    model.to_empty(device=device)
    return model.init_weights(int(torch.randint(0, 2**62, ())) if seed is None else seed)
