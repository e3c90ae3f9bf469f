"""`ilm serve --checkpoint DIR`: the OpenAI-compatible server (see docs/serving.md).

Also `ServerThread`: the same server on a thread of this process (tests, the demo, the benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Self

API_KEY_ENV = "ILM_API_KEY"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="HF checkpoint directory (InternLM2 or Llama layout) with tokenizer.json or tokenizer.model")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key-file", default=None,
                        help="require 'Authorization: Bearer KEY' on /v1 routes, KEY being this file's first line "
                             f"(or set the {API_KEY_ENV} environment variable)")
    parser.add_argument("--api-key", default=None,
                        help=f"the key itself (visible to other processes in the process list: prefer {API_KEY_ENV} "
                             "or --api-key-file)")
    parser.add_argument("--max-batch", type=int, default=32, help="requests decoded together (KV cache slots)")
    parser.add_argument("--max-len", type=int, default=None,
                        help="positions per slot (default: the model's context up to 4096; under dynamic NTK "
                             "any length that fits memory)")
    parser.add_argument("--model-name", default=None, help="the model id clients send (default: the directory name)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--max-queue", type=int, default=256,
                        help="requests that may wait for a slot; past it the server answers 429 (default 256)")
    parser.add_argument("--request-timeout", type=float, default=600.0,
                        help="seconds a request may take from arrival to its last token (default 600; 0 = none)")
    parser.add_argument("--max-request-mb", type=float, default=8.0,
                        help="largest request body in MiB (default 8); larger ones get 413")
    parser.add_argument("--stream-interval", type=float, default=0.02,
                        help="seconds streamed tokens may gather before they are sent (default 0.02; first "
                             "tokens and ends go at once; 0 = every decode step)")
    parser.set_defaults(func=_serve)


class StartError(ValueError):
    """A problem with the command line or the checkpoint, told in one line."""


def check_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise StartError(f"{path} is not a directory")
    if not (path / "config.json").exists():
        raise StartError(f"{path} holds no checkpoint (no config.json); point --checkpoint at an exported model")
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer.model").exists():
        raise StartError(f"{path} has no tokenizer files (tokenizer.json or tokenizer.model); the server needs one "
                         "to render chats; copy the tokenizer into the checkpoint directory")
    return path


def load_engine(checkpoint: str | Path, max_batch: int = 32, max_len: int | None = None,
                device: str | None = None, **engine_kw: Any) -> Any:
    """Checkpoint + tokenizer -> a started `Engine`."""
    import torch

    from ilm.model.hf import load_checkpoint
    from ilm.serve.engine import Engine
    from ilm.tokenizer import load_tokenizer

    path = check_checkpoint(checkpoint)
    if max_batch < 1:
        raise StartError(f"--max-batch must be >= 1, got {max_batch}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(path)
    model = load_checkpoint(path, device=device).eval()
    if tok.vocab_size > model.config.vocab_size:
        raise StartError(f"the tokenizer has {tok.vocab_size} tokens but the model only {model.config.vocab_size}")
    return Engine(model, tok, max_batch=max_batch, max_len=max_len, **engine_kw).start()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error (port in use, bad address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        reason = "the port is already in use" if err.errno in (98, 48) else err.strerror
        raise StartError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class ServerThread:
    """uvicorn serving `app` from a thread of this process; `with ServerThread(app) as s: s.url`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = bind(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def api_key(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(key, warning): from --api-key-file, the ILM_API_KEY environment variable, or --api-key (which warns:
    a command line is readable by every process on the machine)."""
    given = [n for n, v in (("--api-key-file", args.api_key_file), ("--api-key", args.api_key)) if v is not None]
    if len(given) > 1:
        raise StartError("give the API key one way: --api-key-file or --api-key (or the ILM_API_KEY variable)")
    if args.api_key_file is not None:
        try:
            lines = Path(args.api_key_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise StartError(f"cannot read the API key from {args.api_key_file}: {err}") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise StartError(f"{args.api_key_file} is empty; write the key on its first line")
        return key, None
    if args.api_key is not None:
        return args.api_key, (f"warning: --api-key puts the key on the command line, where every process on this "
                              f"machine can read it; use {API_KEY_ENV}=KEY or --api-key-file instead")
    return os.environ.get(API_KEY_ENV) or None, None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ilm.serve.app import build_app

    try:
        key, warning = api_key(args)
        if min(args.max_queue, args.request_timeout, args.stream_interval) < 0 or args.max_request_mb <= 0:
            raise StartError("--max-queue, --request-timeout and --stream-interval must be >= 0 and "
                             "--max-request-mb > 0")
        check_checkpoint(args.checkpoint)
        sock = bind(args.host, args.port)  # before loading weights: a taken port fails at once
        engine = load_engine(args.checkpoint, args.max_batch, args.max_len, args.device, max_queue=args.max_queue,
                             timeout=args.request_timeout or None, stream_interval=args.stream_interval)
    except (StartError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if warning:
        print(warning, file=sys.stderr, flush=True)
    name = args.model_name or Path(args.checkpoint).resolve().name
    app = build_app(engine, name, key, int(args.max_request_mb * 2**20))
    print(f"ilm serve: model id {name!r} (clients send \"model\": {json.dumps(name)}) on "
          f"http://{args.host}:{sock.getsockname()[1]}/v1 (max batch {engine.max_batch}, queue {engine.max_queue}, "
          f"context {engine.max_len}{', API key required' if key else ''})", flush=True)
    server = _stopping_server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=3),
                              engine, app.state.server)
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop(timeout=2)
    return 0


def _stopping_server(config: Any, engine: Any, server: Any) -> Any:
    """A uvicorn.Server whose SIGTERM / SIGINT also fails the requests in flight at once (503, or an error
    event when streamed), so shutdown never waits on them; the engine thread stops after its current step."""
    import asyncio

    import uvicorn

    class Stopping(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            engine.begin_stop()  # a flag: safe in a signal handler
            try:  # the requests in flight are told on the event loop, not inside the handler
                asyncio.get_running_loop().call_soon_threadsafe(server.abort_all)
            except RuntimeError:
                pass
            super().handle_exit(sig, frame)

    return Stopping(config)
