"""Shared fixtures: a small tokenizer, a random tiny checkpoint, and a checkpoint taught (here, once per
session) to call a `get_weather` tool; `serving(ckpt)` runs the server on a thread of this process."""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ilm.model import build_model, get_preset
from ilm.model.hf import save_checkpoint
from ilm.serve.app import build_app
from ilm.serve.cli import ServerThread, load_engine
from ilm.tokenizer import train_tokenizer

DATA = Path(__file__).parents[1] / "tokenizer" / "data"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CITIES = {"Paris": "sunny", "London": "rainy", "Tokyo": "cloudy"}


def weather_conversation(city: str) -> list[dict]:
    """User asks, assistant calls the tool, the tool answers, the assistant answers: the exact messages the
    OpenAI client sends back in the round trip test (so the model is taught on those very tokens)."""
    return [
        {"role": "user", "content": f"What is the weather in {city}?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}]},
        {"role": "tool", "content": json.dumps({"city": city, "weather": CITIES[city]})},
        {"role": "assistant", "content": f"It is {CITIES[city]} in {city}."},
    ]


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_tok")
    corpus = d / "corpus.txt"
    lines = [json.dumps(WEATHER_TOOL)] + [json.dumps(weather_conversation(c)) for c in CITIES]
    corpus.write_text("\n".join(lines * 20) + "\n" + (DATA / "en_prose.txt").read_text())
    return train_tokenizer([corpus], d / "tok", vocab_size=512)


def _save(model, tok, path: Path, fmt: str = "internlm2") -> Path:
    save_checkpoint(model, path, fmt=fmt)
    tok.save(path)
    return path


@pytest.fixture(scope="session")
def random_ckpt(tok, tmp_path_factory):
    model = build_model(get_preset("tiny"), seed=0).eval()
    return _save(model, tok, tmp_path_factory.mktemp("serve_random") / "ckpt")


def teach(tok, steps: int = 200, seed: int = 0):
    """Overfit a tiny model on the weather conversations (assistant tokens only), full batch, Adam.
    One thread: on a shared machine this tiny model trains many times faster than with several."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _teach(tok, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _teach(tok, steps: int, seed: int):
    torch.manual_seed(seed)
    cfg = get_preset("tiny", hidden_size=128, intermediate_size=352, max_position_embeddings=512)
    model = build_model(cfg, seed=seed)
    rows = [tok.render(weather_conversation(c), tools=[WEATHER_TOOL]) for c in CITIES]
    T = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), T), tok.pad_id)
    labels = torch.full((len(rows), T), -100)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        target = torch.tensor(r.ids[1:])
        keep = torch.tensor(r.mask[1:]).bool()
        labels[i, : len(r.ids) - 1] = torch.where(keep, target, torch.full_like(target, -100))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        loss = model(ids, labels=labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), loss.item()


@pytest.fixture(scope="session")
def taught_ckpt(tok, tmp_path_factory):
    model, loss = teach(tok)
    assert loss < 0.02, f"the tiny model did not learn the tool call (loss {loss:.3f})"
    return _save(model, tok, tmp_path_factory.mktemp("serve_taught") / "ckpt")


@contextlib.contextmanager
def serving(ckpt: Path, max_batch: int = 32, api_key: str | None = None, name: str = "tiny",
            **engine_kw) -> Iterator:
    """(base_url, engine) of a server on a free 127.0.0.1 port, stopped afterwards."""
    engine = load_engine(ckpt, max_batch=max_batch, device="cpu", **engine_kw)
    try:
        app = build_app(engine, name, api_key)
        engine.server = app.state.server  # (tests only: the HTTP side, to reach its event loop)
        with ServerThread(app) as srv:
            yield srv.url, engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def random_server(random_ckpt):
    with serving(random_ckpt) as s:
        yield s


@pytest.fixture(scope="module")
def taught_server(taught_ckpt):
    with serving(taught_ckpt) as s:
        yield s


def raw(url: str, method: str, path: str, body: bytes | dict | None = None,
        headers: dict | None = None) -> tuple[int, dict]:
    """One plain HTTP request (stdlib only) -> (status, JSON body)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"null")
    conn.close()
    return out


def is_openai_error(body: dict) -> dict:
    """The error object of an OpenAI-shaped error body (asserts the shape)."""
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, body
    assert isinstance(err["message"], str) and err["message"]
    return err
