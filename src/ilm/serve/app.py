"""The OpenAI-compatible HTTP API over an `Engine` (Starlette; run it with uvicorn).

Routes: POST /v1/chat/completions, POST /v1/completions (both streamed as server-sent events with
`stream: true`), GET /v1/models, GET /health; /v1/responses answers 501 (not served). Errors always have OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`; every request value is checked in `ilm.serve.validate`
before the engine sees it. A full queue is a 429 with Retry-After; a request that fails inside the engine
is a 500 for that request only; one that passes its deadline a 504; requests in flight when the server
stops get a 503 (or, streamed, an error event).

Tool calls: the client's `tools` are checked (each `parameters` must be a valid JSON schema) and
rendered as the chat format's plugin system message; the model's `<|action_start|><|plugin|>` calls are
parsed from its output ids (never from text, so a user who types the control tokens' spelling cannot
forge a call) into OpenAI `tool_calls`; `tool` messages go back in as environment messages. A named
`tool_choice` starts the assistant turn with that call's header, tokenised as the chat format renders a
call (`ilm.tokenizer.chat.call_header_ids`), and lets the model write the arguments.

Content, streamed or not, is the engine's `TextTracker` text of the same ids, so the two always agree.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ilm.serve import validate as V
from ilm.serve.engine import Engine
from ilm.serve.request import Event, Params, PromptTooLong, QueueFull, Stopped
from ilm.serve.validate import ApiError, error_response
from ilm.tokenizer.chat import call_header_ids, parse_reply

DEFAULT_MAX_BODY = 8 * 2**20
_DRAIN = 64 * 2**20  # past this much of a too-large body, stop reading it
# how a request that failed inside the engine is answered (non-streamed)
_FAILURES = {"timeout": (504, "timeout"), "shutting_down": (503, "server_error"), "engine_error": (500, "server_error")}


def _client_probe(request: Request) -> tuple[Callable[[], bool] | None, Callable[[], None]]:
    """(alive, close): `alive()` peeks at the client's socket (a copy of its descriptor), so the engine thread
    sees a client that left before its next step, without waiting for the event loop. (None, no-op) where the
    socket cannot be reached (a server other than uvicorn)."""
    transport = getattr(getattr(request.receive, "__self__", None), "transport", None)
    raw = transport.get_extra_info("socket") if transport is not None else None
    if raw is None:
        return None, lambda: None
    try:
        sock = socket.socket(fileno=os.dup(raw.fileno()))
    except OSError:
        return None, lambda: None

    def alive() -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True  # connected, nothing sent: waiting for its answer
        except OSError:
            return False

    return alive, sock.close


class _Sink:
    """Where a request's events go: its handler's asyncio queue, on that handler's loop."""

    __slots__ = ("__weakref__", "loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.loop, self.queue = loop, queue

    def __call__(self, ev: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)


def deliver(items: list[tuple[Any, Event]]) -> None:
    """The engine's events of one step -> one call per event loop (not one wake-up per token)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, asyncio.Queue, Event]]] = {}
    for req, ev in items:
        if isinstance(req.sink, _Sink):
            by_loop.setdefault(req.sink.loop, []).append((req, req.sink.queue, ev))
            continue
        try:
            req.sink(ev)
        except Exception:  # noqa: BLE001 (its loop is closed: the client is gone)
            req.cancelled = True
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # the loop is closed
            for req, _, _ in batch:
                req.cancelled = True


def _put_all(batch: list[tuple[Any, asyncio.Queue, Event]]) -> None:
    for _, queue, ev in batch:
        queue.put_nowait(ev)


class Server:
    """State shared by the routes: the engine, the tokenizer, the served model's name, the API key."""

    def __init__(self, engine: Engine, model_name: str, api_key: str | None = None,
                 max_body: int = DEFAULT_MAX_BODY):
        self.engine, self.tok, self.model_name, self.api_key = engine, engine.tok, model_name, api_key
        self.max_body = max_body
        self.created = int(time.time())
        # the sinks of requests in flight; weak: a request whose handler never ran its cleanup (a stream the
        # client dropped before it started) leaves once the engine lets go of it
        self._inflight: weakref.WeakSet[_Sink] = weakref.WeakSet()

    def abort_all(self, message: str = "the server is shutting down") -> None:
        """Answer every request in flight with an error now (at shutdown)."""
        ev = Event(None, "", "error", message, "shutting_down")
        for sink in list(self._inflight):
            try:
                sink(ev)
            except RuntimeError:  # its loop is closed
                pass

    # --------------------------------------------------------------- request plumbing
    def _auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", None, "invalid_api_key")

    async def _read(self, request: Request) -> bytes:
        """The body, refused (413) past `max_body` bytes without keeping more than that in memory."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= self.max_body:
                chunks.append(chunk)
            elif size > _DRAIN:
                break
        if size > self.max_body:
            raise ApiError(413, f"the request body has more than {self.max_body:,} bytes, this server's limit",
                           None, "request_too_large")
        return b"".join(chunks)

    def _parse(self, data: bytes) -> dict:
        body = V.strict_json(data)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        V.check_text(body)
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise ApiError(404, f"The model '{model!s:.100}' does not exist; this server serves '{self.model_name}'",
                           "model", "model_not_found")
        return body

    def _params(self, body: dict, default_max: int | None, mode: str, prefix: list[int] = ()) -> Params:
        if V.get(body, "n", int, 1) != 1:
            raise ApiError(400, "only n=1 is supported", "n")
        for name in ("logprobs", "top_logprobs", "echo", "best_of"):  # refused, never silently ignored
            if body.get(name) not in (None, False, 0) and not (name == "best_of" and body.get(name) == 1):
                raise ApiError(400, f"{name} is not supported by ilm serve (docs/serving.md, 'Not supported')", name)
        max_tokens = V.get(body, "max_completion_tokens", int, None)
        if max_tokens is None:
            max_tokens = V.get(body, "max_tokens", int, default_max)
        if max_tokens is None:
            max_tokens = self.engine.max_len
        if max_tokens <= 0:
            raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
        return Params(max_tokens=min(max_tokens, self.engine.max_len), temperature=V.temperature(body),
                      top_p=V.number(body, "top_p", 1.0, 0, 1, lo_open=True), stop=V.stop(body), seed=V.seed(body),
                      mode=mode, prefix=tuple(prefix))

    def _submit(self, request: Request, prompt: list[int], params: Params,
                stream: bool) -> tuple[Any, asyncio.Queue, Callable]:
        """Queue the request -> (engine request, its event queue, done()); done() must run when it ends.
        A non-streamed request gets only its final event."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        alive, close = _client_probe(request)
        try:
            sink = _Sink(loop, queue)
            req = self.engine.submit(prompt, params, sink, alive, per_token=stream)
        except PromptTooLong as err:
            close()
            raise ApiError(400, str(err), "messages", "context_length_exceeded") from None
        except ValueError as err:
            close()
            raise ApiError(400, str(err)) from None
        except QueueFull as err:
            close()
            raise ApiError(429, f"the server is busy: {err}", None, "queue_full", "rate_limit_error",
                           {"Retry-After": "1"}) from None
        except Stopped as err:
            close()
            raise ApiError(503, str(err), kind="server_error") from None
        self._inflight.add(sink)

        def done() -> None:
            self._inflight.discard(sink)
            self.engine.cancel(req)
            close()

        return req, queue, done

    async def _collect(self, request: Request, req: Any, queue: asyncio.Queue, done: Callable) -> Event:
        """Wait for a non-streamed request's last event; a client that leaves meanwhile cancels it (the
        engine also peeks at the socket before every step)."""

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            self.engine.cancel(req)

        watcher = asyncio.create_task(watch())
        try:
            async for ev in self._events(queue):
                last = ev
        finally:
            watcher.cancel()
            done()
        if last.error:
            status, kind = _FAILURES.get(last.code or "", (500, "server_error"))
            raise ApiError(status, last.error, None, last.code, kind)
        return last

    @staticmethod
    async def _events(queue: asyncio.Queue) -> AsyncIterator[Event]:
        while True:
            ev = await queue.get()
            yield ev
            if ev.finish_reason is not None:
                return

    @staticmethod
    async def _batches(queue: asyncio.Queue) -> AsyncIterator[list[Event]]:
        """The events that have arrived, as a list (a streamed response writes each list in one send)."""
        while True:
            batch = [await queue.get()]
            while not queue.empty() and batch[-1].finish_reason is None:
                batch.append(queue.get_nowait())
            yield batch
            if batch[-1].finish_reason is not None:
                return

    @staticmethod
    def _error_event(ev: Event) -> str:
        err = {"error": {"message": ev.error, "type": "server_error", "param": None, "code": ev.code}}
        return f"data: {json.dumps(err)}\n\n"

    # --------------------------------------------------------------- chat
    def _chat_prompt(self, data: bytes) -> tuple[dict, list[int], list[int], list[dict] | None]:
        """(Off the event loop: parsing and tokenising a large body takes a while.) The body, prompt ids,
        forced output prefix ids (named tool_choice) and the tools."""
        body = self._parse(data)
        messages = V.messages(body)
        tools = body.get("tools")
        tools = V.tools(tools) if tools else None
        forced = V.tool_choice(body, tools)
        if body.get("tool_choice") == "none":
            tools = None
        try:
            ids = self.tok.render(messages, tools=tools, add_generation_prompt=True).ids
        except ValueError as err:
            raise ApiError(400, str(err), "messages") from None
        prefix = call_header_ids(self.tok, forced) if forced is not None else []
        return body, ids + prefix, prefix, tools

    def _calls(self, prefix: list[int], output: list[int], tools: list | None) -> list[dict]:
        """OpenAI tool_calls of a finished chat output (parsed from ids, not text)."""
        if not tools:
            return []
        return [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c["parameters"], ensure_ascii=False)}}
                for c in parse_reply(prefix + output, self.tok).tool_calls]

    async def chat(self, request: Request) -> Any:
        self._auth(request)
        body, prompt, prefix, tools = await _off_loop(self._chat_prompt, await self._read(request))
        params = self._params(body, None, "chat", prefix)
        stream = bool(V.get(body, "stream", bool, False))
        include_usage = bool(V.options(body, "stream_options").get("include_usage")) if stream else False
        req, queue, done = self._submit(request, prompt, params, stream)
        rid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
        if stream:
            return StreamingResponse(self._chat_stream(req, queue, done, rid, created, prompt, prefix, tools,
                                                       include_usage), media_type="text/event-stream")
        last = await self._collect(request, req, queue, done)
        calls = self._calls(prefix, req.output, tools)
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

    async def _chat_stream(self, req: Any, queue: asyncio.Queue, done: Callable, rid: str, created: int,
                           prompt: list[int], prefix: list[int], tools: list | None,
                           include_usage: bool) -> AsyncIterator[str]:
        def chunk(delta: dict, finish: str | None = None) -> str:
            data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            if include_usage:
                data["usage"] = None
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        # a token's chunk is this request's fixed JSON around the text: serialise the fixed part once
        mark = json.dumps("\x00", ensure_ascii=False)
        head, tail = chunk({"content": "\x00"}).split(mark)

        def end(ev: Event) -> list[str]:
            if ev.error:
                return [self._error_event(ev)]
            calls = self._calls(prefix, req.output, tools)
            out, finish = [], ev.finish_reason
            if calls:
                out.append(chunk({"tool_calls": [dict(c, index=i) for i, c in enumerate(calls)]}))
                finish = "tool_calls"
            out.append(chunk({}, finish))
            if include_usage:
                data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                        "choices": [], "usage": _usage(len(prompt) - len(prefix), len(prefix) + len(req.output))}
                out.append(f"data: {json.dumps(data)}\n\n")
            return [*out, "data: [DONE]\n\n"]

        try:
            yield chunk({"role": "assistant", "content": ""})
            async for batch in self._batches(queue):  # one SSE chunk per token, one send per batch
                out = [head + json.dumps(ev.text, ensure_ascii=False) + tail for ev in batch if ev.text]
                if batch[-1].finish_reason is not None:
                    out += end(batch[-1])
                yield "".join(out)
        finally:  # a client that went away mid-stream frees its slot before the next decode step
            done()

    # --------------------------------------------------------------- completions
    def _completion_prompt(self, data: bytes) -> tuple[dict, list[int]]:
        body = self._parse(data)
        prompt_in = body.get("prompt")
        if isinstance(prompt_in, list) and len(prompt_in) == 1 and isinstance(prompt_in[0], str):
            prompt_in = prompt_in[0]
        if isinstance(prompt_in, str):
            if not prompt_in:
                raise ApiError(400, "'prompt' is empty", "prompt")
            prompt = self.tok.encode(prompt_in, bos=True)
        elif isinstance(prompt_in, list) and prompt_in and all(type(t) is int for t in prompt_in):
            prompt = list(prompt_in)
        else:
            raise ApiError(400, "'prompt' must be a non-empty string or a list of token ids (one prompt only)",
                           "prompt")
        if body.get("echo"):
            raise ApiError(400, "echo is not supported", "echo")
        return body, prompt

    async def completions(self, request: Request) -> Any:
        self._auth(request)
        body, prompt = await _off_loop(self._completion_prompt, await self._read(request))
        params = self._params(body, 16, "plain")
        stream = bool(V.get(body, "stream", bool, False))
        req, queue, done = self._submit(request, prompt, params, stream)
        rid, created = "cmpl-" + uuid.uuid4().hex, int(time.time())

        def data(text: str, finish: str | None) -> dict:
            return {"id": rid, "object": "text_completion", "created": created, "model": self.model_name,
                    "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}

        if stream:
            async def events() -> AsyncIterator[str]:
                try:
                    async for batch in self._batches(queue):
                        out = [f"data: {json.dumps(data(ev.text, ev.finish_reason), ensure_ascii=False)}\n\n"
                               for ev in batch if (ev.text or ev.finish_reason) and not ev.error]
                        if batch[-1].error:
                            out.append(self._error_event(batch[-1]))
                        elif batch[-1].finish_reason is not None:
                            out.append("data: [DONE]\n\n")
                        yield "".join(out)
                finally:
                    done()

            return StreamingResponse(events(), media_type="text/event-stream")
        last = await self._collect(request, req, queue, done)
        out = data(req.text, last.finish_reason)
        out["usage"] = _usage(len(prompt), len(req.output))
        return JSONResponse(out)

    # --------------------------------------------------------------- misc
    async def models(self, request: Request) -> JSONResponse:
        self._auth(request)
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "ilm"}]})

    async def health(self, request: Request) -> JSONResponse:
        e = self.engine
        ok = e.alive
        return JSONResponse({"status": "ok" if ok else "error", "active": e.active, "waiting": e.waiting,
                             "max_batch": e.max_batch, "max_queue": e.max_queue, "context": e.max_len,
                             "last_error": e.last_error, "stats": e.stats.as_dict()},
                            status_code=200 if ok else 503)


async def _off_loop(fn: Callable[[bytes], Any], data: bytes) -> Any:
    """`fn(data)` on a worker thread when the body is large (parsing and tokenising megabytes would stall every
    stream on the event loop); inline when small (a thread hop costs more than the work)."""
    return await run_in_threadpool(fn, data) if len(data) > 64 * 1024 else fn(data)


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _responses_refused(request: Request) -> JSONResponse:
    """The Responses API is refused in so many words (a bare 404 reads like a wrong base URL)."""
    return error_response(501, "the Responses API (/v1/responses) is not served by ilm serve; use "
                          "/v1/chat/completions (streamed or not, with tools)", None, "unsupported_endpoint")


def build_app(engine: Engine, model_name: str = "ilm", api_key: str | None = None,
              max_body: int = DEFAULT_MAX_BODY) -> Starlette:
    server = Server(engine, model_name, api_key, max_body)
    engine.deliver = deliver

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
        Route("/v1/responses", _responses_refused, methods=["POST", "GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.server = server
    return app
