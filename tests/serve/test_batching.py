"""Continuous batching: 32 concurrent streaming clients share decode steps and each gets its solo output; a
client that disconnects frees its slot at once without stalling the others."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time

import openai

from tests.serve.conftest import serving

PROMPTS = [f"Request {i}: " + "tell me about the river and the town " * (i % 5) for i in range(32)]


async def _stream(url: str, prompt: str, max_tokens: int) -> str:
    c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
    stream = await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                             max_tokens=max_tokens, temperature=0, stream=True)
    text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    await c.close()
    return text


def test_32_concurrent_streams_share_decode_steps(random_ckpt):
    max_tokens = 48
    with serving(random_ckpt, max_batch=32) as (url, engine):
        solo = []
        before = engine.stats.as_dict()
        for p in PROMPTS:  # one after another: every decode step serves one request
            solo.append(asyncio.run(_stream(url, p, max_tokens)))
        mid = engine.stats.as_dict()
        seq_tokens, seq_steps = mid["tokens"] - before["tokens"], mid["decode_steps"] - before["decode_steps"]

        async def together() -> list[str]:
            return await asyncio.gather(*(_stream(url, p, max_tokens) for p in PROMPTS))

        both = asyncio.run(together())
        after = engine.stats.as_dict()
    tokens, steps = after["tokens"] - mid["tokens"], after["decode_steps"] - mid["decode_steps"]
    assert both == solo  # greedy: each output is its solo run
    assert tokens == seq_tokens
    seq_rate, rate = seq_tokens / seq_steps, tokens / steps
    print(f"tokens per decode step: {rate:.2f} batched, {seq_rate:.2f} one after another")
    assert rate >= 3 * seq_rate, (rate, seq_rate, after)
    assert after["max_active"] >= 8


def test_disconnect_frees_the_slot(random_ckpt):
    """max_batch=2: a long stream is dropped after a few chunks; its slot goes at once (far before its
    max_tokens), the client beside it is not stalled, and two more requests then run side by side."""
    with serving(random_ckpt, max_batch=2) as (url, engine):
        body = {"model": "tiny", "messages": [{"role": "user", "content": "go on"}], "max_tokens": 200,
                "temperature": 0, "stream": True}
        beside: list[str] = []
        thread = threading.Thread(target=lambda: beside.append(asyncio.run(_stream(url, "a second client", 30))))
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        thread.start()
        events = 0
        while events < 3:
            line = r.fp.readline().decode()
            assert line and "[DONE]" not in line, "the stream ended before the client left"
            events += line.startswith("data: ")
        r.close()
        conn.close()  # the client goes away mid-stream
        deadline = time.monotonic() + 60
        while engine.stats.cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats.cancelled == 1
        thread.join(timeout=120)
        assert len(beside) == 1  # the client beside it finished

        async def two() -> list[str]:
            return await asyncio.gather(_stream(url, "third", 10), _stream(url, "fourth", 10))

        assert len(asyncio.run(two())) == 2
        stats = engine.stats
        assert stats.tokens < 200  # the dropped stream did not run on to its max_tokens
        assert stats.slots_freed == stats.requests == 4
        # never more rows than slots, none left behind (whether the clients overlapped in time is up to the scheduler)
        assert 1 <= stats.max_active <= 2 and engine.active == 0


def test_non_streamed_request_cancelled_when_the_client_leaves(random_ckpt):
    with serving(random_ckpt, max_batch=2) as (url, engine):
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 200, "temperature": 0}
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + 60
        while engine.stats.tokens < 3 and time.monotonic() < deadline:  # it is being decoded
            time.sleep(0.005)
        conn.close()
        while engine.stats.cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats.cancelled == 1 and engine.stats.tokens < 200 and engine.active == 0
