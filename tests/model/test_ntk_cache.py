"""Dynamic NTK past max_position_embeddings: cached decoding is exact (the causal rule), and scores do not
depend on their batch.

The reference is written here from scratch (no ilm attention or RoPE code): position by position, every key
is rotated from scratch with the base of the query's own length, in float64 angles."""

import math

import pytest
import torch
import torch.nn.functional as F

from ilm.model import KVCache, build_model, get_preset
from ilm.model.generate import Sampling, generate_stream

MAX_POS = 16


def _model(seed: int = 11):
    cfg = get_preset("tiny", max_position_embeddings=MAX_POS, rope_scaling={"type": "dynamic", "factor": 2.0})
    model = build_model(cfg, seed=seed).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # sharper attention, so positions matter
            layer.attention.wqkv.weight.mul_(8)
    return model


def _base(cfg, length: int) -> float:
    """HF InternLM2's dynamic NTK base for a sequence of `length` tokens."""
    dim = cfg.head_dim
    if length <= cfg.max_position_embeddings:
        return cfg.rope_theta
    f = cfg.rope_scaling_factor
    return cfg.rope_theta * (f * length / cfg.max_position_embeddings - (f - 1)) ** (dim / (dim - 2))


def _rotate(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """x (T, heads, D) at positions (T,), rotate-half RoPE with `base`, angles in float64."""
    D = x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos.double()[:, None] * inv[None]
    cos, sin = torch.cat((ang, ang), -1).cos().float()[:, None], torch.cat((ang, ang), -1).sin().float()[:, None]
    half = D // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


@torch.no_grad()
def causal_reference(model, ids: list[int]) -> torch.Tensor:
    """(T, V) logits where position t attends with the base of length t + 1 (queries and keys alike)."""
    cfg = model.config
    T = len(ids)
    pos = torch.arange(T)
    x = model.model.tok_embeddings(torch.tensor(ids))
    for layer in model.model.layers:
        a = layer.attention
        qkv = a.wqkv(layer.attention_norm(x)).view(T, a.n_kv, a.group + 2, a.head_dim)
        q = qkv[:, :, : a.group].reshape(T, a.n_heads, a.head_dim)
        k = qkv[:, :, a.group].repeat_interleave(a.group, dim=1)
        v = qkv[:, :, a.group + 1].repeat_interleave(a.group, dim=1)
        rows = []
        for t in range(T):
            base = _base(cfg, t + 1)
            qt = _rotate(q[t : t + 1], pos[t : t + 1], base)[0]  # (H, D)
            kt = _rotate(k[: t + 1], pos[: t + 1], base)  # (t+1, H, D)
            w = torch.einsum("hd,shd->hs", qt, kt).div(math.sqrt(a.head_dim)).softmax(-1)
            rows.append(torch.einsum("hs,shd->hd", w, v[: t + 1]).reshape(-1))
        x = x + a.wo(torch.stack(rows))
        x = x + layer.feed_forward(layer.ffn_norm(x))
    return F.linear(model.model.norm(x), model.head_weight())


def test_reference_is_the_model_within_the_window():
    model = _model()
    ids = torch.randint(3, 500, (MAX_POS,)).tolist()
    with torch.no_grad():
        assert (causal_reference(model, ids) - model(torch.tensor([ids]))[0]).abs().max().item() <= 1e-4


def test_cached_decoding_equals_full_recompute_at_every_step_past_max_positions():
    """A ragged left-padded batch, one prompt already past the window (prefilled in chunks of 5 that straddle
    it), 30 greedy steps to 3x max_position_embeddings: every step's logits equal the from-scratch recompute."""
    model = _model()
    prompts = [[1] + list(range(40, 60)), [1, 5], [1] + list(range(300, 311))]
    new = 30
    seen = []
    out = [[] for _ in prompts]
    sampling = Sampling(max_new_tokens=new, greedy=True, stop_ids=(), prefill_chunk=5)
    for step in generate_stream(model, prompts, sampling, on_step=lambda logits, _: seen.append(logits.clone())):
        for row, t in zip(out, step):
            row.append(t)
    assert len(prompts[0]) + new > 3 * MAX_POS
    worst = 0.0
    for row, (p, o) in enumerate(zip(prompts, out)):
        ref = causal_reference(model, p + o)
        for step, logits in enumerate(seen):
            worst = max(worst, (logits[row] - ref[len(p) + step - 1]).abs().max().item())
        with torch.no_grad():  # the model's own full recompute under the causal rule agrees too
            full = model(torch.tensor([p + o]), causal_ntk=True)[0]
        assert (full - ref).abs().max().item() <= 1e-4
    assert worst <= 1e-4, worst
    # the rule is not the whole-sequence one: a full forward rotating every position with the last length's
    # base gives other logits past the window (why a cache cannot follow that one)
    with torch.no_grad():
        whole = model(torch.tensor([prompts[0] + out[0]]))[0, -1]
    assert (whole - causal_reference(model, prompts[0] + out[0])[-1]).abs().max().item() > 1e-3


@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_chunked_causal_prefill_fills_the_cache_as_one_forward(chunk):
    """Prefill chunks past the window (padded rows, per-query bases) leave logits and keys of one forward."""
    from ilm.model.generate import prefill

    model = _model(seed=3)
    g = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(3, 500, (n,), generator=g).tolist() for n in (40, 11, 26)]
    P = max(map(len, prompts))
    tokens = torch.tensor([[2] * (P - len(p)) + p for p in prompts])
    valid = torch.tensor([[False] * (P - len(p)) + [True] * len(p) for p in prompts])
    one = KVCache(model.config, 3, P, torch.device("cpu"), torch.float32)
    ref = prefill(model, tokens, valid, one, chunk=4096, causal=True)
    cache = KVCache(model.config, 3, P, torch.device("cpu"), torch.float32)
    got = prefill(model, tokens, valid, cache, chunk=chunk, causal=True)
    alone = torch.stack([causal_reference(model, p)[-1] for p in prompts])
    assert (ref - alone).abs().max().item() <= 1e-4
    assert (got - alone).abs().max().item() <= 1e-4
    keep = valid[:, None, :, None]
    for k, rk in zip(cache.k, one.k):
        assert (k - rk).masked_select(keep).abs().max().item() <= 1e-4


def test_a_row_scores_the_same_alone_and_next_to_longer_rows():
    """Right-padded scoring past the window: with each row's `rope_len` (the whole-sequence rule) or with
    `causal_ntk`, a row's logits are the ones it gets alone; without either, the batch's length leaks in."""
    model = _model(seed=5)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 500, (n,), generator=g).tolist() for n in (20, 45, 33)]
    W = max(map(len, rows))
    ids = torch.tensor([r + [2] * (W - len(r)) for r in rows])
    lengths = torch.tensor([len(r) for r in rows])
    with torch.no_grad():
        per_row = model(ids, rope_len=lengths)
        causal = model(ids, causal_ntk=True)
        leaky = model(ids)
        for i, r in enumerate(rows):
            alone = model(torch.tensor([r]))[0]
            n = len(r)
            assert (per_row[i, :n] - alone).abs().max().item() <= 1e-5
            assert (causal[i, :n] - model(torch.tensor([r]), causal_ntk=True)[0]).abs().max().item() <= 1e-5
        assert (leaky[0, :20] - model(torch.tensor([rows[0]]))[0]).abs().max().item() > 1e-3
        with pytest.raises(ValueError, match="not both"):
            model(ids, rope_len=lengths, causal_ntk=True)


def test_far_positions_stay_finite():
    """A decode step a million positions past the window (huge base, huge angles) gives finite logits."""
    model = _model()
    cache = KVCache(model.config, 1, 4, torch.device("cpu"), torch.float32)
    cache.offset = torch.tensor([-1_000_000])  # slot j holds position j + 1e6
    with torch.no_grad():
        out = model(torch.tensor([[1, 5, 6, 7]]), torch.arange(1_000_000, 1_000_004)[None], cache=cache)
    assert torch.isfinite(out).all()
