"""Continuous batching: many requests share one decode step; they join and leave between steps.

The KV cache has `max_batch` slots of `max_len` positions each. A request gets a free slot, is prefilled
alone into it (positions 0..P-1: every row counts only its own tokens), and from then on takes part in
one batched decode step per token: each active row feeds its last token at its own position, writes its
K/V at its own index, and attends over its own keys under a key mask. A request that finishes (stop id,
stop string, max_tokens, end of its slot) or is cancelled (client gone) leaves between two steps and its
slot is free for the next waiting request at once.

Greedy output is the same as decoding the request alone: prefill is the solo prefill, and a decode row
sees exactly its own keys. Under dynamic NTK a row past `max_position_embeddings` decodes from the cache
by the causal rule (`ilm.model.rope`), exactly as `generate` does, so a slot may hold any `max_len` that
fits memory (checked when the engine starts). Linear and no scaling are capped at `max_context`.

All model work runs on one background thread; results go back through each request's `sink` (the HTTP
layer passes one that hands events to its asyncio loop).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ilm.model.attention import AttnBatch
from ilm.model.generate import Sampling, sample_next
from ilm.model.internlm2 import InternLM2
from ilm.model.memory import check_fits, generation_estimate

DEFAULT_MAX_LEN = 4096


class PromptTooLong(ValueError):
    """The prompt does not fit a cache slot (the server answers 400 context_length_exceeded)."""


@dataclass(frozen=True)
class Params:
    """Per-request sampling: temperature 0 = greedy; `stop` strings end the text before them."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    stop_ids: tuple[int, ...] | None = None  # None = the engine's (tokenizer's) stop ids
    seed: int | None = None
    show_text: bool = True  # False: the output is a forced tool call's arguments, not text to stream

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def sampling(self) -> Sampling:
        greedy = self.temperature == 0
        return Sampling(max_new_tokens=self.max_tokens, greedy=greedy, temperature=self.temperature or 1.0,
                        top_p=self.top_p, seed=self.seed)


@dataclass
class Event:
    """One new token for a request (`token` None on the final event), the text it adds, and the end."""

    token: int | None
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None


@dataclass
class Request:
    prompt: list[int]
    params: Params
    sink: Callable[[Event], None]
    id: int = field(default_factory=itertools.count().__next__)
    output: list[int] = field(default_factory=list)
    text: str = ""  # visible text so far (before any stop string), as sent
    finish_reason: str | None = None
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    # engine-side state
    slot: int = -1
    length: int = 0  # tokens written into the slot's cache
    budget: int = 0  # tokens this request may still produce
    generator: torch.Generator | None = None
    sampling: Sampling | None = None
    tracker: TextTracker | None = None
    stopped_by_string: bool = False
    stops: frozenset[int] = frozenset()


class TextTracker:
    """Incremental visible text of a request's output: control tokens and everything from the first
    `<|action_start|>` on are not text; stop strings cut the text and end the request; text that could be
    the start of a stop string is held back until it is known not to be."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]):
        self.tok = tokenizer
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.control = set(tokenizer.control_ids.values()) | {tokenizer.eos_id, tokenizer.bos_id}
        self.action = tokenizer.control_ids.get("<|action_start|>")
        self.ids: list[int] = []
        self.frozen = False  # an action started: no more visible text
        self.sent = ""

    def push(self, token: int) -> tuple[str, bool]:
        """Add one output id -> (new text to send, whether a stop string ended the text)."""
        if token == self.action:
            self.frozen = True
        if self.frozen or token in self.control:
            return "", False
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special=True)
        for s in self.stop:
            at = text.find(s)
            if at >= 0:
                return self._emit(text[:at]), True
        if text.endswith("\ufffd"):  # half a character: wait for the rest
            return "", False
        return self._emit(text[: max(len(self.sent), len(text) - self.hold)]), False

    def flush(self) -> str:
        """The held-back tail, at the end of the request."""
        if self.frozen and not self.ids:
            return ""
        return self._emit(self.tok.decode(self.ids, skip_special=True))

    def _emit(self, text: str) -> str:
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


class SlotCache:
    """KV cache with one row per slot and per-row write positions (the `KVCache` interface the model
    calls: `append(layer, k, v)` and `advance(T)`).

    Two modes, set before each forward: `prefill(slot)` writes a whole prompt at 0..T-1 of one slot;
    `decode(slots, positions)` writes one token per row at that row's own position and returns each row's
    keys up to the longest row (the caller masks the rest).
    """

    def __init__(self, model: InternLM2, slots: int, max_len: int):
        cfg = model.config
        device, dtype = model.output.weight.device, model.output.weight.dtype
        shape = (slots, cfg.num_kv_heads, max_len, cfg.head_dim)
        # zeros: masked keys must not be NaN garbage (a NaN times a zero weight is still NaN)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.max_len = max_len
        self.length = 0  # unused by our forwards (positions are always given); kept for the interface
        self._slot: int | None = None
        self._rows: torch.Tensor | None = None
        self._pos: torch.Tensor | None = None
        self._keys = 0
        self._contiguous = False

    def prefill(self, slot: int) -> None:
        self._slot, self._rows = slot, None

    def decode(self, rows: torch.Tensor, positions: torch.Tensor, keys: int, contiguous: bool) -> None:
        self._slot, self._rows, self._pos, self._keys, self._contiguous = None, rows, positions, keys, contiguous

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        K, V = self.k[layer], self.v[layer]
        if self._slot is not None:
            s, T = self._slot, k.shape[2]
            K[s : s + 1, :, :T] = k
            V[s : s + 1, :, :T] = v
            return K[s : s + 1, :, :T], V[s : s + 1, :, :T]
        rows, pos, L = self._rows, self._pos, self._keys
        K[rows, :, pos] = k[:, :, 0]
        V[rows, :, pos] = v[:, :, 0]
        if self._contiguous:  # rows 0..n-1: a view, no copy
            n = rows.shape[0]
            return K[:n, :, :L], V[:n, :, :L]
        return K[:, :, :L].index_select(0, rows), V[:, :, :L].index_select(0, rows)

    def advance(self, T: int) -> None:
        pass


@dataclass
class Stats:
    """Counters the tests read instead of wall time."""

    requests: int = 0
    finished: int = 0
    cancelled: int = 0
    prefill_calls: int = 0
    decode_steps: int = 0
    decode_rows: int = 0  # sum over decode steps of the rows in the step
    tokens: int = 0  # output tokens produced
    slots_freed: int = 0
    max_active: int = 0

    @property
    def forward_calls(self) -> int:
        return self.prefill_calls + self.decode_steps

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["forward_calls"] = self.forward_calls
        return d


class Engine:
    """The batching loop. `submit` is thread-safe; call `start` once and `stop` at the end."""

    def __init__(self, model: InternLM2, tokenizer: Any, max_batch: int = 32, max_len: int | None = None):
        cfg = model.config
        self.model, self.tok = model.eval(), tokenizer
        limit = max(max_len or 0, cfg.max_context) if model.rope.kind == "dynamic" else cfg.max_context
        # every slot reserves max_len positions up front: a 32k default would take tens of GB at 32 slots
        self.max_len = min(max_len or DEFAULT_MAX_LEN, limit)
        one = generation_estimate(cfg, 1, self.max_len, self.max_len, model.output.weight.dtype)  # a solo prefill
        check_fits(dataclasses.replace(one, kv_cache=one.kv_cache * max_batch), model.output.weight.device,
                   f"{max_batch} slots of {self.max_len:,} positions", "lower --max-len or --max-batch")
        self.max_batch = max_batch
        self.stop_ids = tuple(tokenizer.stop_ids) if tokenizer is not None else tuple(cfg.stop_token_ids)
        self.device = model.output.weight.device
        self.cache = SlotCache(model, max_batch, self.max_len)
        self.stats = Stats()
        self._waiting: deque[Request] = deque()
        self._active: dict[int, Request] = {}  # slot -> request
        self._free = list(range(max_batch - 1, -1, -1))  # pop() takes the lowest slot
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ public
    def check_prompt(self, prompt: Sequence[int]) -> None:
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) >= self.max_len:
            raise PromptTooLong(f"the prompt has {len(prompt)} tokens, but this server's context is {self.max_len} "
                                f"tokens; shorten it to leave room for the reply")
        bad = [t for t in prompt if not 0 <= t < self.model.config.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids outside [0, {self.model.config.vocab_size}): {bad[:5]}")

    def submit(self, prompt: Sequence[int], params: Params, sink: Callable[[Event], None]) -> Request:
        self.check_prompt(prompt)
        req = Request(list(prompt), params, sink)
        with self._cv:
            if self._stopping:
                raise RuntimeError("the engine is stopped")
            self.stats.requests += 1
            self._waiting.append(req)
            self._cv.notify()
        return req

    def cancel(self, req: Request) -> None:
        """Drop `req` before the next step (its slot is reused at once); no-op if it has finished."""
        with self._cv:
            req.cancelled = True
            self._cv.notify()

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="ilm-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def generate(self, prompt: Sequence[int], params: Params) -> tuple[list[int], str, str]:
        """Blocking helper (tests, benchmarks): output ids, visible text, finish reason."""
        import queue

        q: queue.Queue[Event] = queue.Queue()
        req = self.submit(prompt, params, q.put)
        while (ev := q.get()).finish_reason is None:
            pass
        if ev.error:
            raise RuntimeError(ev.error)
        return req.output, req.text, ev.finish_reason

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while not self._stopping and not self._waiting and not self._active:
                            self._cv.wait()
                        if self._stopping:
                            break
                        self._drop_cancelled()
                        admit = []
                        while self._waiting and self._free:
                            req = self._waiting.popleft()
                            if req.cancelled:
                                self._finish(req, "cancelled")
                                continue
                            req.slot = self._free.pop()
                            admit.append(req)
                    for req in admit:
                        self._prefill(req)
                    self.stats.max_active = max(self.stats.max_active, len(self._active))
                    if self._active:
                        self._decode()
        except BaseException as err:  # (a failed step must end every request, not hang them)
            self.error = err
            with self._cv:
                for req in [*self._active.values(), *self._waiting]:
                    self._finish(req, "error", f"{type(err).__name__}: {err}")
                self._active.clear()
                self._waiting.clear()
            raise
        with self._cv:
            for req in [*self._active.values(), *self._waiting]:
                self._finish(req, "cancelled")

    def _drop_cancelled(self) -> None:
        for slot, req in list(self._active.items()):
            if req.cancelled:
                self._release(req, "cancelled")

    def _release(self, req: Request, reason: str, error: str | None = None) -> None:
        if self._active.get(req.slot) is req:
            del self._active[req.slot]
            self._free.append(req.slot)
            self._free.sort(reverse=True)
            self.stats.slots_freed += 1
        self._finish(req, reason, error)

    def _finish(self, req: Request, reason: str, error: str | None = None) -> None:
        if req.finish_reason is not None:
            return
        req.finish_reason = reason
        if reason == "cancelled":
            self.stats.cancelled += 1
        else:
            self.stats.finished += 1
        tail = ""
        if req.tracker is not None and reason != "cancelled" and not req.stopped_by_string:
            tail = req.tracker.flush()
        req.text += tail
        self._send(req, Event(None, tail, reason, error))

    @staticmethod
    def _send(req: Request, event: Event) -> None:
        try:
            req.sink(event)
        except RuntimeError:  # the receiving event loop is closed: the client is gone
            req.cancelled = True

    def _prefill(self, req: Request) -> None:
        p = req.params
        req.sampling = p.sampling()
        req.generator = torch.Generator(device=self.device).manual_seed(p.seed) if p.seed is not None else None
        req.tracker = TextTracker(self.tok, p.stop)
        req.tracker.frozen = not p.show_text
        req.stops = frozenset(p.stop_ids if p.stop_ids is not None else self.stop_ids)
        P = len(req.prompt)
        req.budget = min(p.max_tokens, self.max_len - P)
        ids = torch.tensor([req.prompt], device=self.device)
        positions = torch.arange(P, device=self.device)[None]
        self.cache.prefill(req.slot)
        logits = self.model(ids, positions, AttnBatch(), self.cache, last_only=True)[:, -1]
        self.stats.prefill_calls += 1
        req.length = P
        self._active[req.slot] = req
        self._take(req, logits)

    def _decode(self) -> None:
        reqs = sorted(self._active.values(), key=lambda r: r.slot)
        slots = [r.slot for r in reqs]
        lengths = [r.length for r in reqs]
        rows = torch.tensor(slots, device=self.device)
        pos = torch.tensor(lengths, device=self.device)
        token = torch.tensor([[r.output[-1]] for r in reqs], device=self.device)
        L = max(lengths) + 1
        contiguous = slots == list(range(len(slots)))
        self.cache.decode(rows, pos, L, contiguous)
        if len(set(lengths)) == 1:
            batch = AttnBatch()  # every row sees all L keys: no mask (as a solo decode step)
        else:
            mask = torch.arange(L, device=self.device)[None] <= pos[:, None]
            batch = AttnBatch(mask=mask[:, None, None, :])
        logits = self.model(token, pos[:, None], batch, self.cache)[:, -1]
        self.stats.decode_steps += 1
        self.stats.decode_rows += len(reqs)
        for i, req in enumerate(reqs):
            req.length += 1
            self._take(req, logits[i : i + 1])

    def _take(self, req: Request, logits: torch.Tensor) -> None:
        """Sample this request's next token from its (1, V) logits, send it, end the request if done."""
        if req.cancelled:
            self._release(req, "cancelled")
            return
        token = int(sample_next(logits, req.sampling, req.generator)[0])
        if req.first_token is None:
            req.first_token = time.perf_counter()
        req.output.append(token)
        req.budget -= 1
        self.stats.tokens += 1
        if token in req.stops:
            self._send(req, Event(token))
            self._release(req, "stop")
            return
        text, hit = req.tracker.push(token)
        req.text += text
        self._send(req, Event(token, text))
        if hit:
            req.stopped_by_string = True
            self._release(req, "stop")
        elif req.budget <= 0:
            self._release(req, "length")
