"""Hostile but well-typed values: each gets a 200 or an OpenAI-shaped 4xx, and the same server process answers a
normal request right after; a fault inside the engine fails only the requests it concerns; SIGTERM stops
`ilm serve` within seconds even after an engine fault and with a request in flight."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ilm.serve.engine import Engine, Params
from ilm.serve.validate import bad_text
from tests.serve.conftest import WEATHER_TOOL, is_openai_error, raw

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
LONE = "\ud800"
CALL = {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {
    "name": "get_weather", "arguments": '{"city": "\\ud800"}'}}]}


def _body(**kw) -> dict:
    return dict(GOOD, **kw)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _bytes(text: str) -> bytes:
    return text.encode()


# name -> (route, body (dict, or bytes sent as they are), allowed statuses)
CASES = {
    "seed 2**64": (CHAT, _body(seed=2**64, temperature=1), {400}),
    "seed -2**63-1": (CHAT, _body(seed=-(2**63) - 1, temperature=1), {400}),
    "seed 2**64-1 (the largest torch takes)": (CHAT, _body(seed=2**64 - 1, temperature=1), {200}),
    "seed -2**63": (CHAT, _body(seed=-(2**63), temperature=1), {200}),
    "seed of 4000 digits": (CHAT, _bytes(json.dumps(GOOD)[:-1] + ', "seed": ' + "9" * 4000 + "}"), {400}),
    "seed of 5000 digits (past Python's int parsing limit)":
        (CHAT, _bytes(json.dumps(GOOD)[:-1] + ', "seed": ' + "9" * 5000 + "}"), {400}),
    "temperature 1e-45": (CHAT, _body(temperature=1e-45, seed=1), {200}),
    "temperature 1e-300": (CHAT, _body(temperature=1e-300), {200}),
    "temperature 5e-324": (CHAT, _body(temperature=5e-324), {200}),
    "temperature NaN": (CHAT, _body(temperature=float("nan")), {400}),
    "temperature Infinity": (CHAT, _body(temperature=float("inf")), {400}),
    "temperature -Infinity": (CHAT, _body(temperature=float("-inf")), {400}),
    "temperature 1e999 (reads as inf)": (CHAT, _bytes(json.dumps(GOOD)[:-1] + ', "temperature": 1e999}'), {400}),
    "temperature 10**400": (CHAT, _body(temperature=10**400), {400}),
    "top_p NaN": (CHAT, _body(top_p=float("nan"), temperature=1), {400}),
    "top_p 1e-300": (CHAT, _body(top_p=1e-300, temperature=1, seed=3), {200}),
    "max_tokens 2**70": (CHAT, _body(max_tokens=2**70), {200}),
    "max_tokens Infinity": (CHAT, _body(max_tokens=float("inf")), {400}),
    "lone surrogate in content": (CHAT, _body(messages=_user("hi " + LONE)), {400}),
    "lone low surrogate in a text part": (CHAT, _body(messages=[{"role": "user", "content": [
        {"type": "text", "text": "\udfff"}]}]), {400}),
    "lone surrogate in tool arguments (a JSON string)": (CHAT, _body(messages=[*_user("weather?"), CALL],
                                                                      tools=[WEATHER_TOOL]), {400}),
    "lone surrogate in tool arguments (an object)": (CHAT, _body(messages=[*_user("weather?"), {
        **CALL, "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                 "arguments": {"city": LONE}}}]}],
        tools=[WEATHER_TOOL]), {400}),
    "NaN inside tool arguments": (CHAT, _body(messages=[*_user("weather?"), {
        **CALL, "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                 "arguments": '{"city": NaN}'}}]}],
        tools=[WEATHER_TOOL]), {400}),
    "lone surrogate in a key": (CHAT, _bytes(json.dumps(GOOD)[:-1] + ', "\\udc80": 1}'), {400}),
    "lone surrogate in a stop string": (CHAT, _body(stop=[LONE]), {400}),
    "lone surrogate in a tool description": (CHAT, _body(tools=[{"type": "function", "function": {
        "name": "f", "description": LONE}}]), {400}),
    "lone surrogate in a completion prompt": (COMPLETIONS, {"model": "tiny", "prompt": LONE}, {400}),
    "invalid UTF-8 bytes": (CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}', {400}),
    "a 10 MB message": (CHAT, _body(messages=_user("x" * 10_000_000)), {413}),
    "1,000 messages": (CHAT, _body(messages=[{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"}
                                             for i in range(1000)]), {400}),
    "nested 100,000 deep": (CHAT, b"[" * 100_000 + b"]" * 100_000, {400}),
    "a stop string of 10,000 characters": (CHAT, _body(stop="s" * 10_000), {400}),
    "stream_options a list": (CHAT, _body(stream=True, stream_options=[1]), {400}),
    "tool_choice function a string": (CHAT, _body(tools=[WEATHER_TOOL], tool_choice={
        "type": "function", "function": "get_weather"}), {400}),
    "role a list": (CHAT, _body(messages=[{"role": ["user"], "content": "x"}]), {400}),
    "prompt ids of 2**70": (COMPLETIONS, {"model": "tiny", "prompt": [1, 2**70]}, {400}),
    "prompt ids negative": (COMPLETIONS, {"model": "tiny", "prompt": [1, -5]}, {400}),
    "prompt ids booleans": (COMPLETIONS, {"model": "tiny", "prompt": [True, False]}, {400}),
    "model name with a surrogate": (CHAT, _body(model=LONE), {400}),
}


def test_hostile_values_get_200_or_an_openai_4xx_and_the_server_goes_on(random_server):
    url, engine = random_server
    for name, (path, body, allowed) in CASES.items():
        status, out = raw(url, "POST", path, body)
        assert status in allowed, (name, status, out)
        if status != 200:
            is_openai_error(out)
        else:
            assert out["choices"][0]["finish_reason"] in ("stop", "length"), (name, out)
        ok, reply = raw(url, "POST", CHAT, GOOD)  # the same process answers a normal request right after
        assert ok == 200, (name, reply)
    status, health = raw(url, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert engine.stats.errors == 0  # every hostile value was stopped at the edge, none reached the engine


def test_bad_text_finds_the_path():
    assert bad_text({"a": ["ok", {"b": "x" + LONE}]}) == "a[1].b"
    assert bad_text({"a": ["ok", "é"]}) is None


def test_an_engine_fault_fails_only_its_own_request(tok):
    """A forward that raises on one prompt: admitted in the same step as a good prompt, the batched prefill
    fails, is retried row by row, and only the faulty request errs; decoding then carries on."""
    from ilm.model import build_model, get_preset

    model = build_model(get_preset("tiny"), seed=1).eval()
    forward = model.forward
    marker = tok.vocab_size - 20  # a spare id no text encodes to

    def faulty(ids, *args, **kw):
        if bool((ids == marker).any()):
            raise RuntimeError("injected fault")
        return forward(ids, *args, **kw)

    model.forward = faulty
    engine = Engine(model, tok, max_batch=4)
    events: dict[str, list] = {"bad": [], "good": [], "good2": []}
    engine.submit([1, 5, marker, 7], Params(max_tokens=4, temperature=0), events["bad"].append)
    engine.submit([1, 5, 9, 7, 11], Params(max_tokens=4, temperature=0), events["good"].append)
    engine.start()
    try:
        deadline = time.monotonic() + 60
        while not (events["good"] and events["good"][-1].finish_reason) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.generate([1, 5, 9], Params(max_tokens=3, temperature=0))[2] == "length"
    finally:
        engine.stop()
    last_bad = events["bad"][-1]
    assert last_bad.finish_reason == "error" and "injected fault" in last_bad.error and last_bad.code == "engine_error"
    assert events["good"][-1].finish_reason == "length" and len(events["good"]) == 5
    assert engine.stats.errors == 1 and engine.error is None


SCRIPT = textwrap.dedent("""
    # `ilm serve` with an injected engine fault (a forward that raises on a marked prompt) and a slow decode
    import sys, time
    import ilm.serve.cli as cli
    load = cli.load_engine
    def faulty_engine(*a, **kw):
        engine = load(*a, **kw)
        forward = engine.model.forward
        def faulty(ids, *args, **kw2):
            if bool((ids == MARKER).any()):
                raise RuntimeError("injected fault")
            time.sleep(0.05)
            return forward(ids, *args, **kw2)
        engine.model.forward = faulty
        return engine
    cli.load_engine = faulty_engine
    from ilm.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_after_an_engine_fault_stops_within_seconds(random_ckpt, tok, tmp_path):
    marker = tok.vocab_size - 20
    script = tmp_path / "faulty_serve.py"
    script.write_text(SCRIPT.replace("MARKER", str(marker)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                       str(Path(__file__).parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script), "serve", "--checkpoint", str(random_ckpt), "--port",
                             str(port), "--model-name", "tiny", "--max-batch", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        line = proc.stdout.readline()
        assert "'tiny'" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        deadline = time.monotonic() + 60
        while True:
            try:
                raw(url, "GET", "/health")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        status, out = raw(url, "POST", COMPLETIONS, {"prompt": [1, marker, 5], "max_tokens": 3})
        assert status == 500 and is_openai_error(out)["code"] == "engine_error", out
        assert "injected fault" in out["error"]["message"]
        status, out = raw(url, "POST", CHAT, GOOD)
        assert status == 200, out
        assert raw(url, "GET", "/health")[1]["status"] == "ok"

        # a long streamed request in flight (0.05 s per token) when SIGTERM comes
        got: list[str] = []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", CHAT, body=json.dumps(dict(GOOD, max_tokens=200, stream=True)),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()

        def read() -> None:
            try:
                for raw_line in resp:
                    got.append(raw_line.decode())
            except OSError:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        while sum(g.startswith("data: ") for g in got) < 3:
            assert time.monotonic() < deadline + 60
            time.sleep(0.02)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        took = time.monotonic() - t0
        reader.join(timeout=30)
        print(f"SIGTERM -> exit in {took:.2f} s, exit status {proc.returncode}")
        assert took < 5, took
        assert not any("[DONE]" in g for g in got)  # the request in flight did not run to its end
        assert any('"shutting_down"' in g for g in got), got[-3:]  # it was told why
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
