"""The official `openai` client against the server: completions, streaming, a real tool-call round trip,
greedy parity with `ilm generate`."""

from __future__ import annotations

import json

import openai
import pytest

from ilm.cli import main
from ilm.model.generate import Sampling, generate
from ilm.model.hf import load_checkpoint
from ilm.tokenizer.chat import call_header_ids
from tests.serve.conftest import WEATHER_TOOL


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_chat_completion_and_usage(random_server, tok):
    url, _ = random_server
    messages = [{"role": "user", "content": "Say something."}]
    r = client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    choice = r.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(tok.render(messages, add_generation_prompt=True).ids)
    assert 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert [m.id for m in client(url).models.list().data] == ["tiny"]


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.9, "top_p": 0.95, "seed": 7}])
def test_stream_deltas_equal_the_whole_reply(random_server, sampling):
    url, _ = random_server
    c = client(url)
    kw = dict(model="tiny", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=24, **sampling)
    whole = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == whole.choices[0].message.content
    assert len(streamed) > 0
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_tool_call_round_trip(taught_server):
    """The taught model calls get_weather; the client runs it and sends the result; the model answers."""
    url, _ = taught_server
    c = client(url)
    messages = [{"role": "user", "content": "What is the weather in London?"}]
    first = c.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER_TOOL], temperature=0,
                                      max_tokens=40)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert args == {"city": "London"}
    result = {"city": args["city"], "weather": "rainy"}  # what get_weather returned
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}]
    final = c.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER_TOOL], temperature=0,
                                      max_tokens=40)
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content == "It is rainy in London."


def test_streamed_tool_call(taught_server):
    url, _ = taught_server
    chunks = list(client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "What is the weather in Tokyo?"}], tools=[WEATHER_TOOL],
        temperature=0, max_tokens=40, stream=True))
    calls = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [json.loads(tc.function.arguments) for tc in calls] == [{"city": "Tokyo"}]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ""  # the call is not shown as text
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_greedy_equals_ilm_generate(random_server, random_ckpt, tok, capsys):
    url, _ = random_server
    prompt = "The history of the city"
    assert main(["generate", "--checkpoint", str(random_ckpt), "--prompt", prompt, "--greedy",
                 "--max-new-tokens", "20"]) == 0
    expected = capsys.readouterr().out.removesuffix("\n")
    r = client(url).completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
    assert r.choices[0].text == expected
    # the chat route decodes the same tokens as the library generator (its content: text outside actions)
    messages = [{"role": "user", "content": prompt}]
    ids = generate(load_checkpoint(random_ckpt).eval(), [tok.render(messages, add_generation_prompt=True).ids],
                   Sampling(max_new_tokens=20, greedy=True, stop_ids=tok.stop_ids), keep_stop=True)[0]
    chat = client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    assert chat.choices[0].message.content == tok.parse(ids).content
    assert chat.usage.completion_tokens == len(ids)


def test_forced_call_header_is_the_rendered_call(tok):
    """The header a named tool_choice writes is exactly the start of the call as the chat format renders it
    (the ids SFT trains on); the old header, which ended in a lone space token, is not."""
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}]
    rendered = tok.render(messages, tools=[WEATHER_TOOL]).ids
    start = rendered.index(tok.control_ids["<|action_start|>"])
    header = call_header_ids(tok, "get_weather")
    assert header == rendered[start : start + len(header)]
    assert tok.decode(header[2:]) == '\n{"name": "get_weather", "parameters":'
    old = header[:2] + tok.encode('\n{"name": "get_weather", "parameters": ')
    assert old != rendered[start : start + len(old)]  # (so this test fails on the old header)


def test_named_tool_choice_parses_at_least_as_often_as_auto(taught_server):
    url, _ = taught_server
    c = client(url)
    named = {"type": "function", "function": {"name": "get_weather"}}
    asks = [(city, {"temperature": 0}) for city in ("Paris", "London", "Tokyo")]
    asks += [("London", {"temperature": 1.0, "seed": s}) for s in range(5)]
    parsed = {"auto": 0, "named": 0}
    for city, sampling in asks:
        for kind, choice in (("auto", "auto"), ("named", named)):
            r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"What is the weather "
                                                                   f"in {city}?"}], tools=[WEATHER_TOOL],
                                          tool_choice=choice, max_tokens=40, **sampling)
            calls = r.choices[0].message.tool_calls or []
            parsed[kind] += bool(calls)
            if calls and sampling["temperature"] == 0:
                assert json.loads(calls[0].function.arguments) == {"city": city}
    print(f"parsed calls out of {len(asks)}: {parsed}")
    assert parsed["named"] >= parsed["auto"] and parsed["named"] >= 3
