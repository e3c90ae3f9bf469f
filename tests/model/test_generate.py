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


def test_dynamic_ntk_generation_stays_correct_across_max_positions():
    model = _sharp_dynamic_model()
    prompts = [[1] + list(range(40, 52)), [1, 5], [1, 300, 301, 302, 303]]
    seen = []  # the last-position logits of every forward the generator runs
    hook = model.output.register_forward_hook(lambda mod, inp, out: seen.append(out[:, -1].clone()))
    out = generate(model, prompts, Sampling(max_new_tokens=19, greedy=True, stop_ids=()))
    hook.remove()
    # every row crosses max_position_embeddings=16 and still equals decoding it alone by full recompute
    assert out == [greedy_recompute(model, p, 19) for p in prompts]
    with torch.no_grad():
        for row, (p, o) in enumerate(zip(prompts, out)):
            for step, logits in enumerate(seen):
                ref = model(torch.tensor([p + o[:step]]))[0, -1]
                assert (logits[row] - ref).abs().max().item() <= 1e-4, (row, step)


def test_a_plain_cache_would_drift_past_max_positions():
    """Control for the test above: reusing cached keys past the threshold changes the logits."""
    model = _sharp_dynamic_model()
    seq = torch.randint(3, model.config.vocab_size, (1, 40))
    cache = KVCache(model.config, 1, 40, torch.device("cpu"), torch.float32)
    errors = []
    with torch.no_grad():
        model(seq[:, :12], cache=cache)
        for t in range(12, 40):
            step = model(seq[:, t : t + 1], cache=cache)[:, -1]
            errors.append((step - model(seq[:, : t + 1])[:, -1]).abs().max().item())
    assert max(errors[:4]) <= 1e-5  # up to max_position_embeddings the cache is exact
    assert max(errors[8:]) > 1e-3  # past it, stale keys drift


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


def test_prompt_longer_than_the_model_can_take(tiny):
    too_long = [1] * tiny.config.max_context
    with pytest.raises(ValueError, match=r"prompt 1 has 256 tokens, but the model takes at most 256"):
        generate(tiny, [[1, 2], too_long], GREEDY)


def test_generation_stops_at_max_context(tiny):
    prompt = [1] * (tiny.config.max_context - 5)
    assert len(generate(tiny, [prompt], GREEDY)[0]) == 5


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
