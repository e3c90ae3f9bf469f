"""The demo's serving stage: `ilm serve` on the demo's chat model, driven by the official `openai` client.

One streamed chat request, then one tool-call round trip (tools sent, `tool_calls` received, the tool run
here, its result sent back as a `tool` message, the final answer received). By default the round trip
names the tool (`tool_choice`): the server writes the call header and the model writes the arguments;
whether they parse as JSON is reported as it is, not assumed. Writes `out/serve/transcripts.json`.

`check_tool_values` makes many such round trips through the same server path, each with a tool that
answers a different value, and counts the final answers that state it: one lucky answer proves nothing,
and a model that answers from memory fails most of them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The tool the demo's SFT data teaches (same declaration as the SFT stage's conversations).
DOC_TOOL = {"type": "function", "function": {
    "name": "python_doc", "description": "Return the docstring of a Python standard-library function.",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}
SYSTEM = {"role": "system", "content": "You are a helpful assistant for Python programmers."}


def python_doc(name: str) -> str:
    """The tool itself: the docstring of `module.function` (an error message if there is none)."""
    module, _, attr = str(name).strip("`").rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        return f"error: no such function {name!r} ({type(err).__name__})"
    return (inspect.getdoc(fn) or "")[:1500]


def _call(fn: Callable[..., Any], args: Any) -> str:
    """Run the tool on the model's arguments; a mistake in them is the tool's answer, as in the agent loop."""
    if not isinstance(args, dict):
        return "error: arguments not an object"
    try:
        result = fn(**args)
    except TypeError as err:
        return f"error: {err}"
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)


def _stream(client: Any, model: str, messages: list[dict], max_tokens: int, **kw: Any) -> dict:
    t0 = time.perf_counter()
    first = None
    text, calls, finish, usage = "", [], None, None
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True}, **kw)
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            first = first or time.perf_counter()
            text += delta.content
        for tc in delta.tool_calls or []:
            first = first or time.perf_counter()
            calls.append({"id": tc.id, "type": "function",
                          "function": {"name": tc.function.name, "arguments": tc.function.arguments}})
        finish = chunk.choices[0].finish_reason or finish
    end = time.perf_counter()
    return {"messages": messages, "streamed_text": text, "tool_calls": calls, "finish_reason": finish,
            "usage": usage, "seconds": round(end - t0, 4),
            "time_to_first_token_s": round((first or end) - t0, 4)}


def round_trip(client: Any, model: str, ask: list[dict], tool: dict, tool_fn: Callable[..., Any],
               tool_choice: str | dict, max_tokens: int) -> tuple[list[dict], str | None, str | None]:
    """One tool-call round trip: the request with `tools`, the model's call run by `tool_fn`, its result sent
    back as a `tool` message, the final answer. Returns (exchanges, final answer, tool result); the answer and
    result are None when the model's call did not parse (the server then reports no tool_calls)."""
    call = _stream(client, model, ask, max_tokens + 32, tools=[tool], tool_choice=tool_choice)
    exchanges = [{"kind": "tool call", **call}]
    if not call["tool_calls"]:
        exchanges[-1]["note"] = ("the model's arguments did not parse as a JSON call; the server reported "
                                 "no tool_calls, so the round trip stopped here")
        return exchanges, None, None
    tc = call["tool_calls"][0]
    result = _call(tool_fn, json.loads(tc["function"]["arguments"]))  # the server only reports calls that parsed
    follow = ask + [{"role": "assistant", "content": None, "tool_calls": [tc]},
                    {"role": "tool", "tool_call_id": tc["id"], "content": result}]
    final = _stream(client, model, follow, max_tokens, tools=[tool])
    exchanges.append({"kind": "tool result -> final answer", **final})
    return exchanges, final["streamed_text"], result


def check_tool_values(checkpoint: Path, cases: list[tuple[list[dict], Callable[..., Any]]], tool: dict,
                      tool_choice: str | dict = "auto", max_tokens: int = 32) -> dict:
    """Serve `checkpoint` and make one round trip per case (messages, the tool's function for that case):
    how many final answers state the tool's result (`uses_result`). The same server path as `run`; each
    case's tool answers differently, so a model that answers from memory instead of the result fails."""
    import openai

    from ilm.serve.app import build_app
    from ilm.serve.cli import ServerThread, load_engine

    engine = load_engine(checkpoint, max_batch=8, device="cpu")
    rows = []
    try:
        with ServerThread(build_app(engine, "ilm-demo")) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=600)
            for ask, fn in cases:
                _, answer, result = round_trip(client, "ilm-demo", ask, tool, fn, tool_choice, max_tokens)
                rows.append({"question": ask[-1]["content"], "tool_result": result, "answer": answer,
                             "uses_result": bool(uses_result(answer, result))})
    finally:
        engine.stop()
    return {"checkpoint": str(checkpoint), "cases": len(rows), "used": sum(r["uses_result"] for r in rows),
            "calls": sum(r["tool_result"] is not None for r in rows), "rows": rows}


WORKS_AT = 0.9  # the share of the check's answers that must state the tool's value to print "works"


def tool_value_line(policy: dict, start: dict, chance: float) -> str:
    """The check's console line: the policy's count, its SFT start's, chance; NOT WORKING below WORKS_AT."""
    n, used = policy["cases"], policy["used"]
    verdict = ("works" if n and used >= WORKS_AT * n else
               f"NOT WORKING (below {WORKS_AT:.0%}: its final answers do not state the tool's result)")
    return (f"tool value: {used}/{n} final answers state the tool's temperature and city (the RLHF policy through "
            f"the server, {policy['calls']}/{n} calls parsed; each case's tool answers its own temperature) vs "
            f"{start['used']}/{n} for its SFT start and {chance * n:.1f}/{n} by chance: {verdict}")


def run(out: Path, checkpoint: Path, quick: bool = True, *, chat: list[dict] | None = None,
        ask: list[dict] | None = None, tool: dict = DOC_TOOL, tool_fn: Callable[..., Any] = python_doc,
        tool_choice: str | dict | None = None) -> dict:
    """Serve `checkpoint` on a free 127.0.0.1 port in this process, run the exchanges, stop the server.

    `chat` is the streamed request's messages, `ask` the tool round trip's, `tool` the declaration sent
    and `tool_fn(**arguments)` what runs the call; `tool_choice` defaults to naming the tool (the server
    writes the call header), "auto" leaves the call to the model. The defaults are the demo SFT model's
    `python_doc` tool. Returns {"requests", "completion_tokens", "tool_call_parsed", "final_answer", "url"}.
    """
    import openai

    from ilm.serve.app import build_app
    from ilm.serve.cli import ServerThread, load_engine

    out = Path(out) / "serve"
    out.mkdir(parents=True, exist_ok=True)
    max_tokens = 32 if quick else 96
    engine = load_engine(checkpoint, max_batch=8, device="cpu")
    exchanges: list[dict] = []
    try:
        with ServerThread(build_app(engine, "ilm-demo")) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=600)
            question = chat or [SYSTEM, {"role": "user", "content": "What does `json.dumps` do?"}]
            exchanges.append({"kind": "streamed chat", **_stream(client, "ilm-demo", question, max_tokens)})

            ask = ask or [SYSTEM, {"role": "user", "content": "Look up `textwrap.dedent` and summarise it."}]
            choice = tool_choice or {"type": "function", "function": {"name": tool["function"]["name"]}}
            trip, answer, result = round_trip(client, "ilm-demo", ask, tool, tool_fn, choice, max_tokens)
            exchanges += trip
            parsed = bool(trip[0]["tool_calls"])
            url = srv.url
    finally:
        engine.stop()
    tokens = sum((e["usage"] or {}).get("completion_tokens", 0) for e in exchanges)
    (out / "transcripts.json").write_text(json.dumps(exchanges, indent=2, ensure_ascii=False) + "\n")
    used = uses_result(answer, result)
    summary = {"requests": len(exchanges), "completion_tokens": tokens, "tool_call_parsed": parsed,
               "final_answer": answer, "tool_result": result, "answer_uses_tool_result": used, "url": url,
               "engine": engine.stats.as_dict()}
    verdict = ("" if used is None else "; the answer uses the tool's result" if used
               else f"; NOT the tool's result ({str(result)[:40]!r}): the tiny model did not learn to use it")
    print(f"[serve] {len(exchanges)} requests through the openai client at {url}/v1, {tokens} tokens; "
          f"streamed: {exchanges[0]['streamed_text'][:60]!r}; tool call parsed: {parsed}"
          + (f"; final answer: {answer[:60]!r}{verdict}" if answer is not None else ""))
    return summary


def uses_result(answer: str | None, result: Any) -> bool | None:
    """Whether a final answer carries the tool's result: every number the result holds appears in the answer
    and the answer states no other number (so "87 degrees" after the tool said 7 is a miss), and every string
    value of a JSON object result appears too (the city, "sunny"); for other results without numbers, whether
    their first words appear. None when there was no round trip."""
    if answer is None or result is None:
        return None
    text = result if isinstance(result, str) else json.dumps(result)
    try:
        fields = json.loads(text)
    except ValueError:
        fields = None
    want = re.findall(r"-?\d+(?:\.\d+)?", text)
    got = re.findall(r"-?\d+(?:\.\d+)?", answer)
    numbers = set(want) <= set(got) and set(got) <= set(want)
    if isinstance(fields, dict):
        return numbers and all(v in answer for v in fields.values() if isinstance(v, str))
    if want:
        return numbers
    head = " ".join(text.split()[:3]).lower()
    return bool(head) and head in answer.lower()
