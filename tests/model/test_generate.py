import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ilm.model import KVCache, build_model, get_preset
from ilm.model.generate import Sampling, generate, generate_stream, greedy_recompute, sample_next
from ilm.model.hf import save_checkpoint

PROMPTS = [[1, 7, 8, 9, 10, 11, 12, 13, 14], [1, 5], [1, 300, 301, 302, 303]]
GREEDY = Sampling(max_new_tokens=12, greedy=True, stop_ids=())


def test_cached_greedy_equals_full_recompute_for_a_ragged_batch(tiny):
    out = generate(tiny, PROMPTS, GREEDY)
    assert [len(o) for o in out] == [12, 12, 12]
    assert out == [greedy_recompute(tiny, p, 12) for p in PROMPTS]


def test_cached_greedy_equals_transformers_generate(tmp_path, tiny):
    transformers = pytest.importorskip("transformers")
    path = save_checkpoint(tiny, tmp_path / "llama", fmt="llama")
    hf = transformers.LlamaForCausalLM.from_pretrained(path).eval()
    P = max(map(len, PROMPTS))
    pad = tiny.config.pad_token_id
    ids = torch.tensor([[pad] * (P - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in PROMPTS])
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                          eos_token_id=None, pad_token_id=pad, min_new_tokens=12)
    assert generate(tiny, PROMPTS, GREEDY) == ref[:, P:].tolist()


def _sharp_dynamic_model():
    cfg = get_preset("tiny", max_position_embeddings=16, rope_scaling={"type": "dynamic", "factor": 2.0})
    model = build_model(cfg, seed=11).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # sharper attention, so positions matter
            layer.attention.wqkv.weight.mul_(8)
    return model


@pytest.mark.parametrize("new, chunk, ntk", [(19, 2048, "recompute"), (40, 5, "recompute"), (40, 5, "cached")])
def test_dynamic_ntk_generation_stays_correct_across_max_positions(new, chunk, ntk):
    """(19, 2048): below max_context; (40, 5): past max_position_embeddings x factor = 32 (no cap any more),
    prefill chunked by 5. "recompute": every step re-prefills, rotating with the base of the full length, and
    equals a full forward; "cached" (the default): every step decodes from the cache and equals the causal
    rule's full forward (`causal_ntk=True`; checked against an independent reference in test_ntk_cache.py)."""
    model = _sharp_dynamic_model()
    causal = ntk == "cached"
    prompts = [[1] + list(range(40, 52)), [1, 5], [1, 300, 301, 302, 303]]
    seen = []  # each step's (B, V) logits
    sampling = Sampling(max_new_tokens=new, greedy=True, stop_ids=(), prefill_chunk=chunk, ntk=ntk)
    out = [[] for _ in prompts]
    for step in generate_stream(model, prompts, sampling, on_step=lambda logits, tok: seen.append(logits.clone())):
        for row, t in zip(out, step):
            row.append(t)
    assert len(seen) == new
    if new == 40:
        assert 13 + new > model.config.max_context == 32
    # every row crosses max_position_embeddings=16 and still equals decoding it alone by full recompute
    assert out == [greedy_recompute(model, p, new, causal_ntk=causal) for p in prompts]
    with torch.no_grad():
        for row, (p, o) in enumerate(zip(prompts, out)):
            for step, logits in enumerate(seen):
                ref = model(torch.tensor([p + o[:step]]), causal_ntk=causal)[0, -1]
                assert (logits[row] - ref).abs().max().item() <= 1e-4, (row, step)


def test_a_plain_cache_would_drift_past_max_positions(monkeypatch):
    """Control for the tests above: cached keys that are not re-rotated to each query's base (the shift
    dropped) are exact up to max_position_embeddings and drift past it."""
    from ilm.model import internlm2
    from ilm.model.attention import attend

    model = _sharp_dynamic_model()
    seq = torch.randint(3, model.config.vocab_size, (1, 40))
    with torch.no_grad():
        full = model(seq, causal_ntk=True)[0]

    def errors():
        cache = KVCache(model.config, 1, 40, torch.device("cpu"), torch.float32)
        out = []
        with torch.no_grad():
            model(seq[:, :12], cache=cache)
            for t in range(12, 40):
                out.append((model(seq[:, t : t + 1], cache=cache)[0, -1] - full[t]).abs().max().item())
        return out

    assert max(errors()) <= 1e-4
    monkeypatch.setattr(internlm2, "attend_shifted", lambda q, k, v, batch, shift, key_pos: attend(q, k, v, batch))
    stale = errors()
    assert max(stale[:4]) <= 1e-5  # up to max_position_embeddings the cache is exact
    assert max(stale[8:]) > 1e-3  # past it, stale keys drift


def test_stop_ids_end_each_row_and_stream_matches(tiny):
    free = generate(tiny, PROMPTS, GREEDY)
    # make a token that first appears mid-row (row r, position k >= 2) a stop id
    r, k = next((r, k) for r, f in enumerate(free) for k in range(2, len(f)) if f[k] not in f[:k])
    stop = free[r][k]
    sampling = Sampling(max_new_tokens=12, greedy=True, stop_ids=(stop,))
    steps = list(generate_stream(tiny, PROMPTS, sampling))
    row = [s[r] for s in steps]
    assert row[: k + 1] == free[r][: k + 1] and all(t is None for t in row[k + 1 :])
    out = generate(tiny, PROMPTS, sampling)
    for o, f in zip(out, free):
        cut = f.index(stop) if stop in f else len(f)
        assert o == f[:cut]
    assert generate(tiny, PROMPTS, sampling, keep_stop=True)[r] == free[r][: k + 1]


def test_default_stop_ids_are_eos_and_im_end():
    cfg = get_preset("internlm2-7b")
    assert cfg.stop_token_ids == (2, 92_542)


def test_sampling_is_reproducible_with_a_seed(tiny):
    s = Sampling(max_new_tokens=10, temperature=0.8, top_p=0.9, top_k=40, seed=3, stop_ids=())
    assert generate(tiny, PROMPTS, s) == generate(tiny, PROMPTS, s)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20), st.floats(0.05, 1.0), st.integers(0, 2**16))
def test_top_k_and_top_p_only_sample_allowed_tokens(k, p, seed):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    tok = sample_next(logits, Sampling(top_k=k, top_p=1.0), gen)
    topk = torch.topk(logits, k, dim=-1).indices
    assert all(t in row for t, row in zip(tok.tolist(), topk.tolist()))
    tok = sample_next(logits, Sampling(top_p=p), gen)
    probs = logits.softmax(-1)
    for row, t in zip(range(4), tok.tolist()):
        higher = probs[row][probs[row] > probs[row, t]].sum().item()
        assert higher < p + 1e-6  # t is inside the smallest set whose mass reaches p


def test_plain_rope_generates_past_max_context_with_a_warning(tiny):
    """No length cap: a prompt longer than max_position_embeddings runs (plain RoPE extrapolates, badly)."""
    prompt = [1] + [7] * tiny.config.max_context
    with pytest.warns(UserWarning, match="past the 256 it was built for"):
        out = generate(tiny, [[1, 2], prompt], GREEDY)
    assert [len(o) for o in out] == [12, 12]
    assert out[1] == greedy_recompute(tiny, prompt, 12)


def test_kv_cache_is_sized_to_the_request(tiny, monkeypatch):
    import ilm.model.generate as gen

    sizes = []
    monkeypatch.setattr(gen, "KVCache", lambda cfg, b, n, *a: sizes.append((b, n)) or KVCache(cfg, b, n, *a))
    generate(tiny, PROMPTS, GREEDY)
    assert sizes == [(3, 9 + 12)]  # longest prompt + max_new_tokens, not max_context (256)
    generate(tiny, [[1] * 300], Sampling(max_new_tokens=4, greedy=True, stop_ids=()))
    assert sizes[-1] == (1, 304)


def test_a_context_beyond_the_memory_estimate_is_refused_naming_it(tiny, monkeypatch):
    from ilm.model import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 10 * 2**20)
    with pytest.raises(memory.ContextMemoryError,
                       match=r"generating 1 row\(s\) of up to 1,000,004 positions needs an estimated [\d.]+ GiB "
                             r"\(weights .*kv cache .* GiB, activations .*\) but only 0.01 GiB is available on cpu"):
        generate(tiny, [[1] * 1_000_000], Sampling(max_new_tokens=4, greedy=True))
    # the same request fits when memory allows; short requests are not affected by the small budget
    assert len(generate(tiny, [[1, 2, 3]], GREEDY)[0]) == 12


def _padded(prompts, pad=2):
    P = max(map(len, prompts))
    tokens = torch.tensor([[pad] * (P - len(p)) + p for p in prompts])
    valid = torch.tensor([[False] * (P - len(p)) + [True] * len(p) for p in prompts])
    return tokens, valid


@pytest.mark.parametrize("scaling", [None, {"type": "dynamic", "factor": 2.0}])
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("lengths", [(40, 11, 26), (40, 40, 40)])
def test_chunked_prefill_equals_one_prefill(scaling, backend, lengths):
    """Chunked prefill (padded batch, rows longer than max_position_embeddings) gives each row's logits of one
    full forward over it alone, and leaves the same KV cache; flex is the GPU path, run eagerly here."""
    from ilm.model.generate import prefill

    model = build_model(get_preset("tiny", max_position_embeddings=16, rope_scaling=scaling), seed=3).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.attention.wqkv.weight.mul_(8)
    g = torch.Generator().manual_seed(0)
    # a padded batch (masked chunks), and an unpadded one (sdpa: the mask-free prefix + causal-square split)
    prompts = [[1] + torch.randint(3, 500, (n,), generator=g).tolist() for n in lengths]
    tokens, valid = _padded(prompts)
    ref_cache = KVCache(model.config, 3, 41, torch.device("cpu"), torch.float32)
    ref = prefill(model, tokens, valid, ref_cache, chunk=4096, backend="sdpa")
    with torch.no_grad():
        alone = torch.stack([model(torch.tensor([p]))[0, -1] for p in prompts])
    assert (ref - alone).abs().max().item() <= 1e-4
    for chunk in (1, 7, 16):
        cache = KVCache(model.config, 3, 41, torch.device("cpu"), torch.float32)
        got = prefill(model, tokens, valid, cache, chunk=chunk, backend=backend)
        assert (got - alone).abs().max().item() <= 1e-4, chunk
        assert cache.length == 41
        for k, rk, v, rv in zip(cache.k, ref_cache.k, cache.v, ref_cache.v):
            assert (k[valid[:, None, :, None].expand_as(k)] - rk[valid[:, None, :, None].expand_as(rk)]).abs().max() <= 1e-4
            assert (v[valid[:, None, :, None].expand_as(v)] - rv[valid[:, None, :, None].expand_as(rv)]).abs().max() <= 1e-4


def test_rope_len_is_what_makes_a_dynamic_chunk_right():
    """Control: a chunk rotated with its own (shorter) length under dynamic NTK differs from the full forward."""
    from ilm.model.attention import prefill_chunk_batch

    model = _sharp_dynamic_model()
    seq = torch.randint(3, 500, (1, 40))
    valid = torch.ones(1, 40, dtype=torch.bool)

    def chunked(rope_len):
        cache = KVCache(model.config, 1, 40, torch.device("cpu"), torch.float32)
        model(seq[:, :20], cache=cache, rope_len=rope_len)
        return model(seq[:, 20:], batch=prefill_chunk_batch(valid, 20, 40), cache=cache, rope_len=rope_len)[0, -1]

    with torch.no_grad():
        full = model(seq)[0, -1]
        assert (chunked(torch.tensor([40])) - full).abs().max().item() <= 1e-4
        assert (chunked(None) - full).abs().max().item() > 1e-3  # the first chunk rotated with base(20)


def test_bad_prompts_are_rejected(tiny):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        generate(tiny, [[]], GREEDY)
    with pytest.raises(ValueError, match="outside"):
        generate(tiny, [[1, 10_000]], GREEDY)
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=0)


def test_static_decode_step_equals_the_dynamic_one(tiny, monkeypatch):
    """The graph-shaped step (whole-cache attention under a mask, device-side write index) that CUDA graphs
    replay gives the same tokens, run eagerly here on CPU."""
    import ilm.model.generate as gen

    expected = generate(tiny, PROMPTS, GREEDY)
    monkeypatch.setattr(gen, "_STATIC_ON_CPU", True)
    calls = []
    real = gen._GraphedDecode.__call__
    monkeypatch.setattr(gen._GraphedDecode, "__call__", lambda self, *a: calls.append(1) or real(self, *a))
    assert generate(tiny, PROMPTS, GREEDY) == expected
    assert len(calls) == GREEDY.max_new_tokens - 1


def test_flex_prefill_path_end_to_end(tiny, monkeypatch):
    """The GPU path (FlexAttention chunks over the whole preallocated cache, then the static decode step that CUDA
    graphs replay) run eagerly on CPU: the same tokens as full recompute, with dynamic NTK past the cap too."""
    import ilm.model.generate as gen
    from ilm.model.attention import prefill_backend

    assert prefill_backend(torch.device("cuda")) == "flex" and prefill_backend(torch.device("cpu")) == "sdpa"
    monkeypatch.setattr(gen, "PREFILL_BACKEND", "flex")
    monkeypatch.setattr(gen, "_STATIC_ON_CPU", True)
    chunked = Sampling(max_new_tokens=12, greedy=True, stop_ids=(), prefill_chunk=3)
    assert generate(tiny, PROMPTS, chunked) == [greedy_recompute(tiny, p, 12) for p in PROMPTS]
    model = _sharp_dynamic_model()
    prompts = [[1] + list(range(40, 70)), [1, 5, 6]]
    out = generate(model, prompts, Sampling(max_new_tokens=8, greedy=True, stop_ids=(), prefill_chunk=7))
    assert out == [greedy_recompute(model, p, 8, causal_ntk=True) for p in prompts]


def test_draw_samples_the_given_distribution_and_never_a_token_without_mass():
    """The CPU sampler (inverse CDF, one uniform per row) against the probabilities: 40,000 draws of a 6-token
    distribution with two zero-mass tokens; each frequency within 4 standard errors, the zero tokens never."""
    from ilm.model.generate import draw

    p = torch.tensor([0.5, 0.0, 0.2, 0.25, 0.05, 0.0])
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    got = torch.cat([draw(p.expand(1000, 6), gen) for _ in range(n // 1000)])
    freq = torch.bincount(got, minlength=6).double() / n
    se = (p.double() * (1 - p.double()) / n).sqrt()
    assert freq[1] == freq[5] == 0
    assert ((freq - p.double()).abs() <= 4 * se + 1e-12).all(), freq
    # the same seed, the same draws; another seed, others
    a = draw(p.expand(64, 6), torch.Generator().manual_seed(1))
    assert a.equal(draw(p.expand(64, 6), torch.Generator().manual_seed(1)))
    assert not a.equal(draw(p.expand(64, 6), torch.Generator().manual_seed(2)))


def test_draw_at_the_top_of_the_cdf_takes_the_last_token_with_mass(monkeypatch):
    from ilm.model import generate as G

    monkeypatch.setattr(G.torch, "rand", lambda *a, **k: torch.ones(a[0], a[1], dtype=torch.float64))
    assert G.draw(torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]), None).tolist() == [1, 3]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1])
def test_draw_refuses_probabilities_that_are_not_a_distribution(bad):
    from ilm.model.generate import draw

    with pytest.raises(RuntimeError, match="inf, nan or element < 0"):
        draw(torch.tensor([[0.5, bad, 0.5]]), None)
    with pytest.raises(RuntimeError, match="sums to 0"):
        draw(torch.zeros(1, 3), None)
