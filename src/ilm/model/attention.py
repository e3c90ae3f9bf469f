"""Attention kernels, chosen outside the model: plain causal, packed documents, and decoding with a cache.

A packed row holds several documents; attention must never cross a document boundary. Backends:
- "sdpa"   : torch SDPA, causal (one document per row, no padding) or with an explicit boolean mask
             (packed rows, padded batches, decoding) -- runs everywhere.
- "blocks" : per-document SDPA calls on slices of the row -- no T x T mask, wins for long documents on CPU.
- "flex"   : FlexAttention with a document block mask (GPU without flash-attn).
- "flash"  : flash-attn varlen over cu_seqlens (GPU with `pip install 'ilm[gpu]'`).
Every backend gives the same output wherever it can run (tests/model/test_packing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "blocks", "flex", "flash")  # + "prefix_causal", for prefill chunks only (prefill_chunk_batch)


@dataclass
class AttnBatch:
    """What every layer needs to know about the batch's attention pattern (built once per forward)."""

    backend: str = "sdpa"
    # bool (B, 1, T, S), True = may attend; None = plain causal over the row.
    mask: torch.Tensor | None = None
    # per-row document lengths, for "blocks"
    doc_lens: list[list[int]] | None = None
    # flattened boundaries (int32, len = docs + 1) and the longest document, for "flash"
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0
    # a FlexAttention BlockMask, for "flex"
    block_mask: object | None = None
    # "prefix_causal": queries are the last T of prefix + T keys (an unpadded prefill chunk over the cache)
    prefix: int = 0
    # "flex" only: shapes change from call to call (prefill chunks of growing key length), so on GPU use the
    # FlexAttention compiled with dynamic shapes rather than recompiling for every shape
    dynamic: bool = False


def doc_ids_from_lens(doc_lens: list[list[int]], device: torch.device | None = None) -> torch.Tensor:
    """Per-row document lengths -> (B, T) document ids (rows must sum to the same T)."""
    rows = [torch.repeat_interleave(torch.arange(len(r)), torch.tensor(r)) for r in doc_lens]
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"packed rows must all have the same length, got lengths {sorted(lengths)}")
    return torch.stack(rows).to(device)


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """Positions restart at 0 at every document start."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx))
    return idx - torch.cummax(start_idx, dim=1).values


def lens_from_doc_ids(doc_ids: torch.Tensor) -> list[list[int]]:
    out = []
    for row in doc_ids.tolist():
        lens, prev = [], None
        for d in row:
            if d == prev:
                lens[-1] += 1
            else:
                lens.append(1)
                prev = d
        out.append(lens)
    return out


def packed_batch(doc_ids: torch.Tensor, backend: str | None = None) -> AttnBatch:
    """Attention pattern for packed rows given (B, T) document ids (backend: default for the device)."""
    backend = backend or default_backend(doc_ids.device)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
    if backend == "sdpa":
        T = doc_ids.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
        same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
        return AttnBatch("sdpa", mask=(same_doc & causal)[:, None])
    doc_lens = lens_from_doc_ids(doc_ids)
    if backend == "blocks":
        return AttnBatch("blocks", doc_lens=doc_lens)
    if backend == "flash":
        flat = [n for row in doc_lens for n in row]
        cu = torch.zeros(len(flat) + 1, dtype=torch.int32, device=doc_ids.device)
        cu[1:] = torch.cumsum(torch.tensor(flat, device=doc_ids.device), 0)
        return AttnBatch("flash", cu_seqlens=cu, max_seqlen=max(flat))
    from torch.nn.attention.flex_attention import create_block_mask

    def document_causal(b, h, q, kv):
        return (doc_ids[b, q] == doc_ids[b, kv]) & (q >= kv)

    B, T = doc_ids.shape
    block = create_block_mask(document_causal, B, None, T, T, device=doc_ids.device)
    return AttnBatch("flex", block_mask=block)


def default_backend(device: torch.device) -> str:
    """flash-attn on GPU when installed, FlexAttention on other GPUs, per-document SDPA blocks on CPU.

    On CPU the per-document blocks beat one masked SDPA call at every packing measured (short, long and
    mixed documents; benchmarks/bench_model.py, docs/benchmarks.md): they skip the masked-out area.
    """
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash"
        except ImportError:
            return "flex"
    return "blocks"


def prefill_chunk_batch(valid: torch.Tensor, start: int, end: int, backend: str = "sdpa",
                        kv_len: int | None = None) -> AttnBatch:
    """Attention of query slots [start, end) over key slots [0, kv_len) (default `end`) of left-padded rows.

    `valid` (B, >= end) marks the slots that hold real tokens. A query sees the real keys at or before its
    own slot; a pad query sees itself only, so no softmax row is empty. This is one chunk of a chunked
    prefill (keys already in the KV cache plus the chunk's own). Backends: "sdpa" takes the boolean
    (B, 1, end - start, kv_len) mask (or, with no padding, none: "prefix_causal"); "flex" (the GPU path: it skips masked blocks and keeps no mask) takes
    a block mask of the same pattern, over the whole preallocated cache when `kv_len` is its length.
    """
    kv_len = kv_len or end
    B, dev = valid.shape[0], valid.device
    if backend == "sdpa" and kv_len == end and bool(valid[:, :end].all()):
        return AttnBatch("prefix_causal", prefix=start)  # no padding: no mask needed
    keys = torch.zeros(B, kv_len, dtype=torch.bool, device=dev)
    keys[:, :end] = valid[:, :end]
    if backend == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        def chunk_causal(b, h, q, kv):
            slot = q + start
            return (kv <= slot) & (keys[b, kv] | (kv == slot))

        block = create_block_mask(chunk_causal, B, None, end - start, kv_len, device=dev)
        return AttnBatch("flex", block_mask=block, dynamic=True)
    if backend != "sdpa":
        raise ValueError(f"prefill chunks take the 'sdpa' or 'flex' backend, not {backend!r}")
    q = torch.arange(start, end, device=dev)[:, None]
    k = torch.arange(kv_len, device=dev)[None, :]
    mask = ((k <= q)[None] & keys[:, None, :]) | (k == q)[None]
    return AttnBatch("sdpa", mask=mask[:, None])


def prefill_backend(device: torch.device) -> str:
    """The backend for prefill chunks: FlexAttention on GPU (block-sparse, no materialised mask, any length),
    masked SDPA on CPU (its fused CPU kernel keeps no score matrix; the mask is chunk x keys booleans)."""
    return "flex" if device.type == "cuda" else "sdpa"


_FLEX = None
_FLEX_DYNAMIC = None


def _flex():
    """FlexAttention is only fast compiled; compile once per process (eager runs it unfused on CPU)."""
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention, dynamic=False) if torch.cuda.is_available() else flex_attention
    return _FLEX


def _flex_dynamic():
    """FlexAttention compiled once for shapes that vary (prefill chunks); eager on CPU."""
    global _FLEX_DYNAMIC
    if _FLEX_DYNAMIC is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX_DYNAMIC = torch.compile(flex_attention, dynamic=True) if torch.cuda.is_available() else flex_attention
    return _FLEX_DYNAMIC


def _prefix_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: int) -> torch.Tensor:
    """Queries at key slots [prefix, prefix + T) over keys [0, prefix + T), causal.

    Every query sees the whole prefix and is causal inside its own chunk: on CPU, two unmasked fused calls
    (the prefix, then the chunk's causal square) merged by their log-sum-exp beat one masked call (~25%,
    docs/benchmarks.md, Long context). Elsewhere, or where the CPU kernel is missing, one masked SDPA call.
    """
    gqa = q.shape[1] != k.shape[1]
    T, S = q.shape[2], k.shape[2]
    if prefix == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)
    kernel = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if kernel is None or q.device.type != "cpu" or torch.is_grad_enabled() and q.requires_grad:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    if gqa:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    out_p, lse_p = kernel(q, k[:, :, :prefix], v[:, :, :prefix])
    out_c, lse_c = kernel(q, k[:, :, prefix:], v[:, :, prefix:], is_causal=True)
    lse = torch.logaddexp(lse_p, lse_c)
    out = out_p.float() * (lse_p - lse).exp()[..., None] + out_c.float() * (lse_c - lse).exp()[..., None]
    return out.to(q.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: AttnBatch) -> torch.Tensor:
    """q: (B, H, T, D); k, v: (B, KV, S, D) -> (B, H, T, D). GQA is handled by the kernels."""
    gqa = q.shape[1] != k.shape[1]
    if batch.backend == "sdpa":
        if batch.mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=batch.mask, enable_gqa=gqa)
    if batch.backend == "prefix_causal":
        return _prefix_causal(q, k, v, batch.prefix)
    if batch.backend == "blocks":  # split / cat (not slice assignment): autograd stays cheap
        rows = []
        for b, lens in enumerate(batch.doc_lens):
            parts = zip(*(x[b : b + 1].split(lens, dim=2) for x in (q, k, v)))
            rows.append(torch.cat(
                [F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=gqa) for qd, kd, vd in parts],
                dim=2,
            ))
        return torch.cat(rows, dim=0)
    if batch.backend == "flex":
        flex = _flex_dynamic() if batch.dynamic else _flex()
        return flex(q, k, v, block_mask=batch.block_mask, enable_gqa=gqa)
    if batch.backend == "flash":
        from flash_attn import flash_attn_varlen_func

        B, H, T, D = q.shape
        flat = lambda x: x.transpose(1, 2).reshape(B * T, x.shape[1], D)
        out = flash_attn_varlen_func(
            flat(q), flat(k), flat(v), batch.cu_seqlens, batch.cu_seqlens, batch.max_seqlen, batch.max_seqlen,
            causal=True,
        )
        return out.view(B, T, H, D).transpose(1, 2)
    raise ValueError(f"unknown attention backend {batch.backend!r}")


SHIFT_BLOCK_ELEMS = 1 << 24  # elements of re-rotated keys (+ their cos/sin) one query block may hold at once


def allowed_keys(batch: AttnBatch, B: int, T: int, S: int, device: torch.device) -> torch.Tensor:
    """(B, T, S) booleans: which keys each query sees, from a mask or a causal pattern (queries = last T keys)."""
    if batch.mask is not None:
        return batch.mask[:, 0].expand(B, T, S)
    if batch.backend in ("sdpa", "prefix_causal"):
        return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T).expand(B, T, S)
    raise ValueError(f"dynamic NTK past max_position_embeddings with a cache takes the 'sdpa' backend, "
                     f"not {batch.backend!r}")


def shift_block(B: int, S: int, n_kv: int, n_heads: int, D: int) -> int:
    """Queries per block of `attend_shifted`, so its temporaries stay under SHIFT_BLOCK_ELEMS."""
    return max(1, SHIFT_BLOCK_ELEMS // max(1, B * S * (2 * n_kv * D + 2 * D + n_heads)))


def attend_shifted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: AttnBatch, shift,
                   key_pos: torch.Tensor) -> torch.Tensor:
    """Attention where each query (or each row) re-rotates the keys to its own RoPE base (`ilm.model.rope.KeyShift`).

    q: (B, H, T, D), already rotated with each query's base; k: (B, KV, S, D) rotated with the trained base at
    `key_pos` (B, S). Per row: the keys are re-rotated once and any kernel runs. Per query: queries go in
    blocks; each block's keys (B, block, KV, S, D) are re-rotated and scored in float32 (O(S) per query: one
    decode step re-rotates each cached key once).
    """
    from ilm.model.rope import apply_rope, rotate_half

    B, H, T, D = q.shape
    KV, S = k.shape[1], k.shape[2]
    if shift.per_row():  # one base per row (a decode step, or the whole-sequence rule): rotate once, same pattern
        cos, sin = shift.cos_sin(key_pos, 0, 1, k.dtype)
        return attend(q, apply_rope(k, cos, sin), v, batch)
    allowed = allowed_keys(batch, B, T, S, q.device)
    G = H // KV
    out = torch.empty_like(q)
    k_half = rotate_half(k)
    block = shift_block(B, S, KV, H, D)
    for s in range(0, T, block):
        e = min(s + block, T)
        n = S - T + e  # queries sit at the last T key slots: this block sees none past its last query's
        cos, sin = shift.cos_sin(key_pos[:, :n], s, e, k.dtype)  # (B, b, n, D)
        keys = (k[:, None, :, :n] * cos[:, :, None]).addcmul_(k_half[:, None, :, :n], sin[:, :, None])
        qb = q[:, :, s:e].reshape(B, KV, G, e - s, D).permute(0, 3, 1, 2, 4)  # (B, b, KV, G, D)
        scores = (qb @ keys.transpose(-1, -2)).float() * D**-0.5  # (B, b, KV, G, n)
        scores = scores.masked_fill(~allowed[:, s:e, None, None, :n], float("-inf"))
        probs = scores.softmax(dim=-1).to(v.dtype)
        o = torch.einsum("btkgs,bksd->btkgd", probs, v[:, :, :n])
        out[:, :, s:e] = o.permute(0, 2, 3, 1, 4).reshape(B, H, e - s, D)
    return out
