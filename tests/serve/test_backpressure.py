"""Backpressure: a bounded queue answers 429 with Retry-After past its bound and every accepted request
completes; requests past their deadline get 504; a non-streamed request whose client left is cancelled
within a decode step or two."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.serve.conftest import is_openai_error, raw, serving

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}


@contextmanager
def gated(engine) -> Iterator[threading.Event]:
    """Every forward of `engine`'s model waits until the returned event is set (so requests pile up)."""
    gate = threading.Event()
    model = engine.model
    forward = model.forward

    def wait_then_forward(*args, **kw):
        gate.wait(timeout=120)
        return forward(*args, **kw)

    model.forward = wait_then_forward
    try:
        yield gate
    finally:
        gate.set()
        model.forward = forward


async def _post(port: int, body: dict) -> tuple[int, dict, dict]:
    """One POST over a fresh connection (stdlib asyncio) -> (status, headers, JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(payload)


def test_500_requests_against_a_bounded_queue(random_ckpt):
    max_batch, max_queue, n = 4, 16, 500
    with serving(random_ckpt, max_batch=max_batch, max_queue=max_queue) as (url, engine), gated(engine) as gate:
        port = int(url.rsplit(":", 1)[1])

        async def run() -> list[tuple[int, dict, dict]]:
            tasks = [asyncio.create_task(_post(port, BODY)) for _ in range(n)]
            deadline = time.monotonic() + 120
            while engine.stats.requests + engine.stats.rejected < n:  # all arrived: the rest are refused
                assert time.monotonic() < deadline, engine.stats
                await asyncio.sleep(0.02)
            gate.set()
            return await asyncio.gather(*tasks)

        results = asyncio.run(run())
        stats = engine.stats
    accepted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    print(f"{len(accepted)} accepted, {len(refused)} refused with 429; most waiting at once: {stats.max_waiting}")
    assert len(accepted) + len(refused) == n
    assert stats.max_waiting <= max_queue  # memory stays bounded: the queue never grew past its bound
    assert len(accepted) == stats.requests <= max_queue + max_batch
    assert len(refused) == stats.rejected >= n - max_queue - max_batch
    for _, headers, body in refused:
        assert int(headers["retry-after"]) >= 1
        err = is_openai_error(body)
        assert err["type"] == "rate_limit_error" and err["code"] == "queue_full"
    for _, _, body in accepted:  # every accepted request ran to its end
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert body["usage"]["completion_tokens"] >= 1
    assert stats.finished == stats.requests and stats.errors == 0


def test_requests_past_their_deadline_get_504(random_ckpt):
    with serving(random_ckpt, max_batch=1, timeout=1.0) as (url, engine):
        with gated(engine) as gate:
            out: list = []
            threads = [threading.Thread(target=lambda: out.append(raw(url, "POST", "/v1/chat/completions", BODY)))
                       for _ in range(2)]  # one in the slot (stuck in its prefill), one in the queue
            for t in threads:
                t.start()
            time.sleep(1.5)
            gate.set()
            for t in threads:
                t.join(timeout=60)
        assert [s for s, _ in out] == [504, 504], out
        assert all(is_openai_error(b)["code"] == "timeout" for _, b in out)
        assert engine.stats.timed_out == 2
        status, body = raw(url, "POST", "/v1/chat/completions", BODY)
        assert status == 200, body


def test_non_streamed_request_cancelled_within_a_step_or_two(random_ckpt):
    """The engine peeks at the client's socket before every step: once the client has closed its end, at most
    the step already running adds a token (measured here in tokens, not seconds), even while the server's
    event loop is busy (here: blocked for 2 s, as by a long tokenisation) and cannot notice the disconnect."""
    with serving(random_ckpt, max_batch=2) as (url, engine):
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        body = dict(BODY, max_tokens=200, messages=[{"role": "user", "content": "go"}])
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + 60
        while engine.stats.tokens < 3 and time.monotonic() < deadline:  # it is being decoded
            time.sleep(0.002)
        loop = next(iter(engine.server._inflight)).loop
        busy = threading.Event()
        loop.call_soon_threadsafe(lambda: (busy.set(), time.sleep(2.0)))
        busy.wait(timeout=60)
        conn.sock.close()
        conn.close()
        at_close = engine.stats.tokens
        while engine.stats.cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        after = engine.stats.tokens - at_close
        print(f"tokens produced after the client left: {after}")
        assert engine.stats.cancelled == 1 and engine.active == 0
        assert after <= 2, after
