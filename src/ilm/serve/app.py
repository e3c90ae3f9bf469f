"""The OpenAI-compatible HTTP API over an `Engine` (Starlette; run it with uvicorn).

Routes: POST /v1/chat/completions, POST /v1/completions (both streamed as server-sent events with
`stream: true`), GET /v1/models, GET /health. Errors always have OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`. Bodies are validated here by hand rather than by a
model class so every mistake gets a message that names the field.

Tool calls: the client's `tools` are checked (each `parameters` must be a valid JSON schema) and
rendered as the chat format's plugin system message; the model's `<|action_start|><|plugin|>` calls are
parsed from its output ids (never from text, so a user who types the control tokens' spelling cannot
forge a call) into OpenAI `tool_calls`; `tool` messages go back in as environment messages. A named
`tool_choice` starts the assistant turn with that call's header and lets the model write the arguments.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ilm.serve.engine import Engine, Event, Params, PromptTooLong
from ilm.tokenizer.chat import ACTION_START, PLUGIN, parse_reply

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
         "environment": "environment"}

_TOOL_SCHEMA = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                "description": {"type": "string"},
                "parameters": {"type": "object"},
                "strict": {"type": ["boolean", "null"]},
            },
        },
    },
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.kind)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


# ----------------------------------------------------------------------------- validation helpers


def _get(body: dict, name: str, types: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ApiError(400, f"'{name}' must be {_names(types)}, got a boolean", name)
    if not isinstance(value, types):
        raise ApiError(400, f"'{name}' must be {_names(types)}, got {type(value).__name__}", name)
    return value


def _names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
                        "list": "an array", "dict": "an object"}.get(t.__name__, t.__name__) for t in types)


def _text(content: Any, where: str) -> str | None:
    """OpenAI content: a string, null, or a list of {"type": "text", "text": ...} parts."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}.content[{i}]: only text parts are supported", f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where}.content must be a string, null or a list of text parts", f"{where}.content")


def _messages(body: dict) -> list[dict]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty array of messages", "messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object", where)
        role = m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role {role!r} is not one of {sorted(ROLES)}", f"{where}.role")
        msg: dict[str, Any] = {"role": ROLES[role], "content": _text(m.get("content"), where)}
        if role in ("system", "developer", "user") and msg["content"] is None:
            raise ApiError(400, f"{where}.content is required for role {role!r}", f"{where}.content")
        if isinstance(m.get("name"), str) and role in ("user", "environment"):
            msg["name"] = m["name"]
        calls = m.get("tool_calls")
        if calls:
            if role != "assistant" or not isinstance(calls, list):
                raise ApiError(400, f"{where}.tool_calls: only assistant messages carry a list of tool calls",
                               f"{where}.tool_calls")
            msg["tool_calls"] = [_call_in(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
        out.append(msg)
    return out


def _call_in(call: Any, where: str) -> dict:
    f = call.get("function") if isinstance(call, dict) else None
    if not isinstance(f, dict) or not isinstance(f.get("name"), str):
        raise ApiError(400, f"{where} needs function.name", where)
    args = f.get("arguments", "{}")
    if isinstance(args, str):
        try:
            args = json.loads(args or "{}")
        except json.JSONDecodeError as err:
            raise ApiError(400, f"{where}.function.arguments is not JSON: {err}", where) from None
    return {"type": "function", "function": {"name": f["name"], "arguments": args}}


def validate_tools(tools: Any) -> list[dict]:
    """Each tool has OpenAI's shape and its `parameters` is a valid JSON schema, else 400."""
    if not isinstance(tools, list):
        raise ApiError(400, "'tools' must be an array", "tools")
    for i, tool in enumerate(tools):
        try:
            jsonschema.validate(tool, _TOOL_SCHEMA)
        except jsonschema.ValidationError as err:
            raise ApiError(400, f"tools[{i}] is not a function tool: {err.message}", f"tools[{i}]") from None
        schema = tool["function"].get("parameters")
        if schema is not None:
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as err:
                raise ApiError(400, f"tools[{i}].function.parameters is not a valid JSON schema: {err.message}",
                               f"tools[{i}].function.parameters") from None
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise ApiError(400, "tool names must be unique", "tools")
    return tools


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise ApiError(400, "'stop' must be a string or an array of up to 4 strings", "stop")
    return tuple(s for s in stop if s)


# ----------------------------------------------------------------------------- the app


class Server:
    """State shared by the routes: the engine, the tokenizer, the served model's name, the API key."""

    def __init__(self, engine: Engine, model_name: str, api_key: str | None = None):
        self.engine, self.tok, self.model_name, self.api_key = engine, engine.tok, model_name, api_key
        self.created = int(time.time())

    # --------------------------------------------------------------- request plumbing
    def _auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip(), self.api_key):
            raise ApiError(401, "Incorrect API key provided.", None, "invalid_api_key")

    async def _body(self, request: Request) -> dict:
        self._auth(request)
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(400, f"the request body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise ApiError(404, f"The model '{model}' does not exist; this server serves '{self.model_name}'",
                           "model", "model_not_found")
        return body

    def _params(self, body: dict, default_max: int | None, show_text: bool = True) -> Params:
        if _get(body, "n", int, 1) != 1:
            raise ApiError(400, "only n=1 is supported", "n")
        max_tokens = _get(body, "max_completion_tokens", int, None)
        if max_tokens is None:
            max_tokens = _get(body, "max_tokens", int, default_max)
        if max_tokens is None:
            max_tokens = self.engine.max_len
        if max_tokens <= 0:
            raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
        temperature = float(_get(body, "temperature", (int, float), 1.0))
        if not 0 <= temperature <= 2:
            raise ApiError(400, f"temperature must be in [0, 2], got {temperature}", "temperature")
        top_p = float(_get(body, "top_p", (int, float), 1.0))
        if not 0 < top_p <= 1:
            raise ApiError(400, f"top_p must be in (0, 1], got {top_p}", "top_p")
        seed = _get(body, "seed", int, None)
        return Params(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=_stop(body), seed=seed,
                      show_text=show_text)

    def _submit(self, prompt: list[int], params: Params) -> tuple[Any, asyncio.Queue]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        try:
            req = self.engine.submit(prompt, params, lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev))
        except PromptTooLong as err:
            raise ApiError(400, str(err), "messages", "context_length_exceeded") from None
        except ValueError as err:
            raise ApiError(400, str(err)) from None
        except RuntimeError as err:
            raise ApiError(503, str(err), kind="server_error") from None
        return req, queue

    async def _collect(self, request: Request, req: Any, queue: asyncio.Queue) -> Event:
        """Wait for a non-streamed request's last event; a client that leaves meanwhile cancels it."""

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            self.engine.cancel(req)

        watcher = asyncio.create_task(watch())
        try:
            async for ev in self._events(req, queue):
                last = ev
        finally:
            watcher.cancel()
            self.engine.cancel(req)
        return last

    @staticmethod
    async def _events(req: Any, queue: asyncio.Queue) -> AsyncIterator[Event]:
        while True:
            ev = await queue.get()
            yield ev
            if ev.finish_reason is not None:
                return

    # --------------------------------------------------------------- chat
    def _chat_prompt(self, body: dict) -> tuple[list[int], list[int], list[dict] | None, str | None]:
        """Prompt ids, forced output prefix ids (named tool_choice), the tools, the forced tool's name."""
        messages = _messages(body)
        tools = body.get("tools")
        tools = validate_tools(tools) if tools else None
        choice = body.get("tool_choice", "auto" if tools else "none")
        forced = None
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
            if not isinstance(name, str):
                raise ApiError(400, "tool_choice must be 'none', 'auto' or {'type': 'function', 'function': "
                                    "{'name': ...}}", "tool_choice")
            if not tools or name not in [t["function"]["name"] for t in tools]:
                raise ApiError(400, f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
            forced = name
        elif choice == "required":
            raise ApiError(400, "tool_choice 'required' is not supported; name the tool instead", "tool_choice")
        elif choice not in ("none", "auto"):
            raise ApiError(400, f"tool_choice {choice!r} is not one of 'none', 'auto' or a named function",
                           "tool_choice")
        if choice == "none":
            tools = None
        try:
            ids = self.tok.render(messages, tools=tools, add_generation_prompt=True).ids
        except ValueError as err:
            raise ApiError(400, str(err), "messages") from None
        prefix: list[int] = []
        if forced is not None:
            ids = ids + [self.tok.control_ids[ACTION_START], self.tok.control_ids[PLUGIN]]
            text = '\n{"name": ' + json.dumps(forced, ensure_ascii=False) + ', "parameters": '
            prefix = ids[-2:] + self.tok.encode(text)
            ids = ids + prefix[2:]
        return ids, prefix, tools, forced

    def _reply(self, prefix: list[int], output: list[int], tools: list | None) -> tuple[str | None, list[dict]]:
        """Content and OpenAI tool_calls of a finished chat output (parsed from ids, not text)."""
        reply = parse_reply(prefix + output, self.tok)
        calls = []
        if tools:
            for c in reply.tool_calls:
                calls.append({"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                              "function": {"name": c["name"],
                                           "arguments": json.dumps(c["parameters"], ensure_ascii=False)}})
        return reply.content, calls

    async def chat(self, request: Request) -> Any:
        body = await self._body(request)
        prompt, prefix, tools, forced = self._chat_prompt(body)
        params = self._params(body, None, show_text=forced is None)
        stream = bool(_get(body, "stream", bool, False))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if stream else False
        req, queue = self._submit(prompt, params)
        rid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
        if stream:
            return StreamingResponse(self._chat_stream(req, queue, rid, created, prompt, prefix, tools, include_usage),
                                     media_type="text/event-stream")
        last = await self._collect(request, req, queue)
        if last.error:
            raise ApiError(500, last.error, kind="server_error")
        content, calls = self._reply(prefix, req.output, tools)
        if req.stopped_by_string:
            content = req.text
        message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
        finish = last.finish_reason
        if calls:
            message["tool_calls"] = calls
            finish = "tool_calls"
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": created, "model": self.model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": _usage(len(prompt) - len(prefix), len(prefix) + len(req.output)),
        })

    async def _chat_stream(self, req: Any, queue: asyncio.Queue, rid: str, created: int, prompt: list[int],
                           prefix: list[int], tools: list | None, include_usage: bool) -> AsyncIterator[str]:
        def chunk(delta: dict, finish: str | None = None) -> str:
            data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            if include_usage:
                data["usage"] = None
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            async for ev in self._events(req, queue):
                if ev.text:
                    yield chunk({"content": ev.text})
                if ev.finish_reason is None:
                    continue
                if ev.error:
                    err = {"error": {"message": ev.error, "type": "server_error", "param": None, "code": None}}
                    yield f"data: {json.dumps(err)}\n\n"
                    return
                _, calls = self._reply(prefix, req.output, tools)
                finish = ev.finish_reason
                if calls:
                    yield chunk({"tool_calls": [dict(c, index=i) for i, c in enumerate(calls)]})
                    finish = "tool_calls"
                yield chunk({}, finish)
                if include_usage:
                    data = {"id": rid, "object": "chat.completion.chunk", "created": created,
                            "model": self.model_name, "choices": [],
                            "usage": _usage(len(prompt) - len(prefix), len(prefix) + len(req.output))}
                    yield f"data: {json.dumps(data)}\n\n"
                yield "data: [DONE]\n\n"
        finally:  # a client that went away mid-stream frees its slot before the next decode step
            self.engine.cancel(req)

    # --------------------------------------------------------------- completions
    async def completions(self, request: Request) -> Any:
        body = await self._body(request)
        prompt_in = body.get("prompt")
        if isinstance(prompt_in, list) and len(prompt_in) == 1 and isinstance(prompt_in[0], str):
            prompt_in = prompt_in[0]
        if isinstance(prompt_in, str):
            if not prompt_in:
                raise ApiError(400, "'prompt' is empty", "prompt")
            prompt = self.tok.encode(prompt_in, bos=True)
        elif isinstance(prompt_in, list) and prompt_in and all(isinstance(t, int) for t in prompt_in):
            prompt = list(prompt_in)
        else:
            raise ApiError(400, "'prompt' must be a non-empty string or a list of token ids (one prompt only)",
                           "prompt")
        if body.get("echo"):
            raise ApiError(400, "echo is not supported", "echo")
        params = self._params(body, 16)
        stream = bool(_get(body, "stream", bool, False))
        req, queue = self._submit(prompt, params)
        rid, created = "cmpl-" + uuid.uuid4().hex, int(time.time())

        def data(text: str, finish: str | None) -> dict:
            return {"id": rid, "object": "text_completion", "created": created, "model": self.model_name,
                    "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}

        if stream:
            async def events() -> AsyncIterator[str]:
                try:
                    async for ev in self._events(req, queue):
                        if ev.text or ev.finish_reason:
                            yield f"data: {json.dumps(data(ev.text, ev.finish_reason), ensure_ascii=False)}\n\n"
                    yield "data: [DONE]\n\n"
                finally:
                    self.engine.cancel(req)

            return StreamingResponse(events(), media_type="text/event-stream")
        last = await self._collect(request, req, queue)
        if last.error:
            raise ApiError(500, last.error, kind="server_error")
        out = data(self._completion_text(req), last.finish_reason)
        out["usage"] = _usage(len(prompt), len(req.output))
        return JSONResponse(out)

    def _completion_text(self, req: Any) -> str:
        """Plain text of the output (control tokens dropped), as `ilm generate` prints it."""
        if req.stopped_by_string:
            return req.text
        ids = [t for t in req.output if t not in req.stops]
        return self.tok.decode(ids, skip_special=True)

    # --------------------------------------------------------------- misc
    async def models(self, request: Request) -> JSONResponse:
        self._auth(request)
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "ilm"}]})

    async def health(self, request: Request) -> JSONResponse:
        e = self.engine
        ok = e.error is None
        return JSONResponse({"status": "ok" if ok else "error", "active": e.active, "waiting": e.waiting,
                             "max_batch": e.max_batch, "context": e.max_len, "stats": e.stats.as_dict()},
                            status_code=200 if ok else 503)


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def build_app(engine: Engine, model_name: str = "ilm", api_key: str | None = None) -> Starlette:
    server = Server(engine, model_name, api_key)

    def wrap(fn: Any) -> Any:
        async def endpoint(request: Request) -> Any:
            try:
                return await fn(request)
            except ApiError as err:
                return err.response()
        return endpoint

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        status = getattr(exc, "status_code", 500)
        kind = "not_found_error" if status == 404 else "invalid_request_error"
        msg = f"no route {request.method} {request.url.path}" if status in (404, 405) else str(exc)
        return error_response(status, msg, None, "unknown_url" if status == 404 else None, kind)

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")

    routes = [
        Route("/v1/chat/completions", wrap(server.chat), methods=["POST"]),
        Route("/v1/completions", wrap(server.completions), methods=["POST"]),
        Route("/v1/models", wrap(server.models), methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.server = server
    return app
