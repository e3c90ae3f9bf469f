"""Engine-level checks: dynamic NTK rows go past max_position_embeddings up to memory; sampling is per request."""

from __future__ import annotations

import time

import pytest

from ilm.model import build_model, get_preset
from ilm.model.generate import Sampling, generate
from ilm.model.memory import ContextMemoryError
from ilm.serve.engine import Engine, Params, PromptTooLong


def test_dynamic_ntk_rows_go_past_max_position_embeddings_up_to_memory(tok):
    rope = {"type": "dynamic", "factor": 2.0}
    model = build_model(get_preset("tiny", max_position_embeddings=64, rope_scaling=rope), seed=0).eval()
    engine = Engine(model, tok, max_batch=2)
    assert engine.max_len == 128  # max_context by default; the cache follows the RoPE base past 64
    engine.check_prompt([1] * 70)
    assert Engine(model, tok, max_batch=2, max_len=300).max_len == 300  # any length that fits memory
    with pytest.raises(ContextMemoryError, match="lower --max-len"):
        Engine(model, tok, max_batch=2, max_len=10**12)
    linear = build_model(get_preset("tiny", max_position_embeddings=64, rope_scaling=dict(rope, type="linear")))
    assert Engine(linear, tok, max_batch=2).max_len == 128
    with pytest.raises(PromptTooLong, match="context is 128"):
        Engine(linear, tok, max_batch=2).check_prompt([1] * 130)


def test_rows_decode_as_alone_and_seeds_are_per_request(tok):
    model = build_model(get_preset("tiny"), seed=1).eval()
    engine = Engine(model, tok, max_batch=4).start()
    try:
        prompts = [tok.encode("a" * n, bos=True) for n in (3, 9, 17)]
        greedy = [engine.generate(p, Params(max_tokens=12, temperature=0))[0] for p in prompts]
        want = [generate(model, [p], Sampling(max_new_tokens=12, greedy=True, stop_ids=tok.stop_ids), keep_stop=True)[0]
                for p in prompts]
        assert greedy == want
        sampled = Params(max_tokens=12, temperature=1.0, seed=5)
        once = engine.generate(prompts[0], sampled)[0]
        assert engine.generate(prompts[0], sampled)[0] == once
        assert engine.generate(prompts[0], Params(max_tokens=12, temperature=1.0, seed=6))[0] != once
    finally:
        engine.stop()
    assert engine.stats.prefill_calls == 6 and engine.stats.slots_freed == 6


@pytest.mark.parametrize("prefill_tokens", [2048, 40])
def test_prompts_admitted_together_are_prefilled_together(tok, prefill_tokens):
    """Six prompts waiting when the loop starts: prefilled in one left-padded forward (2,048-token budget) or
    a few grouped and chunked ones (40), never one by one; each output is the one it gets alone."""
    model = build_model(get_preset("tiny"), seed=2).eval()
    prompts = [tok.encode("b" * n + " river town", bos=True) for n in (1, 4, 9, 2, 17)]
    prompts.insert(4, tok.encode(" ".join(f"{i}x" for i in range(30)), bos=True))
    assert len(prompts[4]) > 40  # prefilled in chunks under the 40-token budget
    alone = Engine(model, tok, max_batch=1).start()
    try:
        want = [alone.generate(p, Params(max_tokens=10, temperature=0))[0] for p in prompts]
    finally:
        alone.stop()
    assert alone.stats.prefill_rows == alone.stats.prefill_calls == len(prompts)
    engine = Engine(model, tok, max_batch=8, prefill_tokens=prefill_tokens)
    events: list[list] = [[] for _ in prompts]
    reqs = [engine.submit(p, Params(max_tokens=10, temperature=0), events[i].append) for i, p in enumerate(prompts)]
    engine.start()
    try:
        deadline = time.monotonic() + 120
        while not all(r.finish_reason for r in reqs) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        engine.stop()
    assert [r.output for r in reqs] == want
    assert engine.stats.prefill_rows == len(prompts)
    if prefill_tokens == 2048:
        assert engine.stats.prefill_calls == 1 and engine.stats.prefill_max_rows == len(prompts)
    else:  # groups of <= 40 padded tokens; the long prompt alone, in chunks of 40
        assert engine.stats.prefill_max_rows >= 2
    print(f"prefill budget {prefill_tokens}: {engine.stats.prefill_calls} prefill forwards for {len(prompts)} prompts")
