"""Continuous batching: many requests share one decode step; they join and leave between steps.

The KV cache has `max_batch` slots of `max_len` positions each. Requests wait in a bounded queue
(`max_queue`; a full queue refuses at once, the server answers 429). Between two steps the loop takes as
many waiting requests as there are free slots and prefills them together: prompts are grouped by length,
left-padded into one batch per group (at most `prefill_tokens` padded tokens per forward; a longer prompt
is prefilled in chunks of that size) with `ilm.model.generate.prefill`, exactly as `ilm generate` prefills
a batch, and each row's keys and values are copied into its slot (positions 0..P-1: a row counts only its
own tokens). From then on every active row takes part in one batched decode step per token: it feeds its
last token at its own position, writes K/V at its own index and attends over its own keys under a key
mask. A request that finishes (stop id, stop string, max_tokens, end of its slot), is cancelled, loses its
client or passes its deadline leaves between two steps, and its slot is free for the next one at once.

Greedy output is the same as decoding the request alone: a padded prefill row sees only its own keys and
positions, and a decode row sees exactly its own keys. Under dynamic NTK a row past
`max_position_embeddings` decodes from the cache by the causal rule (`ilm.model.rope`), exactly as
`generate` does, so a slot may hold any `max_len` that fits memory (checked when the engine starts).
Linear and no scaling are capped at `max_context`.

One request never stops the loop: whatever raises while a request is set up, prefilled (a group that fails
is retried row by row), decoded (a batch that fails is retried row by row) or sampled fails that request
only (`finish_reason` "error"); the loop goes on. All model work runs on one background thread; results go
back through each request's `sink`, gathered and handed to `deliver` at most every `stream_interval` (20 ms)
except first tokens and ends, which go at once (the HTTP layer's `deliver` hands them to its asyncio loop in
one call, not one wake-up per token).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ilm.model.attention import AttnBatch
from ilm.model.cache import KVCache
from ilm.model.generate import prefill, sample_next
from ilm.model.internlm2 import InternLM2
from ilm.model.memory import check_fits, generation_estimate
from ilm.serve.detok import TextTracker
from ilm.serve.request import (  # noqa: F401 (re-exported: the engine's API)
    MIN_TEMPERATURE,
    MIN_TOP_P,
    SEED_RANGE,
    Event,
    Params,
    PromptTooLong,
    QueueFull,
    Request,
    Stats,
    Stopped,
)

DEFAULT_MAX_LEN = 4096


class SlotCache:
    """KV cache with one row per slot and per-row write positions (the `KVCache` interface the model
    calls: `append(layer, k, v)` and `advance(T)`) for decode steps: `decode(rows, positions, keys, ...)`
    sets where each row writes its one token, and `append` returns each row's keys up to the longest row
    (the caller masks the rest). `store(slot, layer, k, v)` puts a prefilled row in its slot."""

    def __init__(self, model: InternLM2, slots: int, max_len: int):
        cfg = model.config
        device, dtype = model.output.weight.device, model.output.weight.dtype
        shape = (slots, cfg.num_kv_heads, max_len, cfg.head_dim)
        # zeros: masked keys must not be NaN garbage (a NaN times a zero weight is still NaN)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.max_len = max_len
        self.length = 0  # unused by our forwards (positions are always given); kept for the interface
        self._rows: torch.Tensor | None = None
        self._pos: torch.Tensor | None = None
        self._keys = 0
        self._contiguous = False

    def decode(self, rows: torch.Tensor, positions: torch.Tensor, keys: int, contiguous: bool) -> None:
        self._rows, self._pos, self._keys, self._contiguous = rows, positions, keys, contiguous

    def store(self, slot: int, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """(H, P, D) keys/values of one prefilled prompt -> positions 0..P-1 of `slot`."""
        self.k[layer][slot, :, : k.shape[1]] = k
        self.v[layer][slot, :, : v.shape[1]] = v

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        K, V = self.k[layer], self.v[layer]
        rows, pos, L = self._rows, self._pos, self._keys
        K[rows, :, pos] = k[:, :, 0]
        V[rows, :, pos] = v[:, :, 0]
        if self._contiguous:  # rows 0..n-1: a view, no copy
            n = rows.shape[0]
            return K[:n, :, :L], V[:n, :, :L]
        return K[:, :, :L].index_select(0, rows), V[:, :, :L].index_select(0, rows)

    def advance(self, T: int) -> None:
        pass


class Engine:
    """The batching loop. `submit` is thread-safe; call `start` once and `stop` at the end.

    `max_queue` bounds the requests waiting for a slot; `timeout` (seconds, None = none) is each request's
    default deadline from submission; `prefill_tokens` bounds the padded tokens of one prefill forward;
    `stream_interval` (seconds) is how long streamed tokens may gather before they are handed to the HTTP
    side (first tokens and ends go at once): every hand-over wakes the event loop's thread and passes the
    GIL back and forth, which on a busy machine costs more than a small model's whole decode step.
    """

    def __init__(self, model: InternLM2, tokenizer: Any, max_batch: int = 32, max_len: int | None = None,
                 max_queue: int = 256, timeout: float | None = None, prefill_tokens: int = 2048,
                 stream_interval: float = 0.02):
        cfg = model.config
        self.model, self.tok = model.eval(), tokenizer
        limit = max(max_len or 0, cfg.max_context) if model.rope.kind == "dynamic" else cfg.max_context
        # every slot reserves max_len positions up front: a 32k default would take tens of GB at 32 slots
        self.max_len = min(max_len or DEFAULT_MAX_LEN, limit)
        if max_batch < 1 or max_queue < 0 or prefill_tokens < 1:
            raise ValueError(f"need max_batch >= 1, max_queue >= 0, prefill_tokens >= 1; got {max_batch}, "
                             f"{max_queue}, {prefill_tokens}")
        self.max_batch, self.max_queue, self.timeout, self.prefill_tokens = max_batch, max_queue, timeout, prefill_tokens
        self.stream_interval = stream_interval
        one = generation_estimate(cfg, 1, self.max_len, self.max_len, model.output.weight.dtype)  # a solo prefill
        check_fits(dataclasses.replace(one, kv_cache=one.kv_cache * max_batch), model.output.weight.device,
                   f"{max_batch} slots of {self.max_len:,} positions", "lower --max-len or --max-batch")
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
        self.error: BaseException | None = None  # set only if the loop itself died (a bug)
        self.last_error: str | None = None  # the latest request failure, for /health
        # called once per step with that step's (request, event) pairs; None: each request's sink in turn
        self.deliver: Callable[[list[tuple[Request, Event]]], None] | None = None
        self._outbox: list[tuple[Request, Event]] = []
        self._urgent = False
        self._last_flush = 0.0

    # ------------------------------------------------------------------ public
    def check_prompt(self, prompt: Sequence[int]) -> None:
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) >= self.max_len:
            raise PromptTooLong(f"the prompt has {len(prompt)} tokens, but this server's context is {self.max_len} "
                                f"tokens; shorten it to leave room for the reply")
        bad = [t for t in prompt if not (isinstance(t, int) and 0 <= t < self.model.config.vocab_size)]
        if bad:
            raise ValueError(f"prompt token ids outside [0, {self.model.config.vocab_size}): {bad[:5]}")

    def submit(self, prompt: Sequence[int], params: Params, sink: Callable[[Event], None],
               alive: Callable[[], bool] | None = None, per_token: bool = True) -> Request:
        """Queue a request (ValueError: a bad prompt; QueueFull; Stopped). `sink` gets an event per token
        (`per_token`) and a final one; `alive()` False means the client left."""
        self.check_prompt(prompt)
        req = Request(list(prompt), params, sink, alive, per_token)
        timeout = params.timeout if params.timeout is not None else self.timeout
        if timeout is not None:
            req.deadline = req.submitted + timeout
        with self._cv:
            if self._stopping:
                raise Stopped("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (the queue holds "
                                f"{self.max_queue}); retry later")
            self.stats.requests += 1
            self._waiting.append(req)
            self.stats.max_waiting = max(self.stats.max_waiting, len(self._waiting))
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

    def begin_stop(self) -> None:
        """Ask the loop to fail every request with "shutting down" and end, without waiting or locking
        (safe in a signal handler); the loop notices within a step or 0.1 s."""
        self._stopping = True

    def stop(self, timeout: float = 10.0) -> None:
        self.begin_stop()
        with self._cv:
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
        admit: list[Request] = []
        try:
            with torch.inference_mode():
                while not self._stopping:
                    with self._cv:
                        if not self._waiting and not self._active and not self._stopping:
                            self._cv.wait(timeout=0.1)
                        admit = [] if self._stopping else self._admit()
                    self._step(admit)
                    admit = []
        except BaseException as err:  # a bug in the loop itself: say so on /health, fail what is left
            self.error = err
            raise
        finally:
            with self._cv:
                self._stopping = True
                left = [*admit, *self._active.values(), *self._waiting]
                self._waiting.clear()
            for req in left:
                self._release(req, "error", "the server is shutting down", "shutting_down")
            self._flush()

    def _admit(self) -> list[Request]:
        """(Under the lock) waiting requests that get a slot now; expired or cancelled ones end here."""
        admit = []
        now = time.perf_counter()
        for req in [r for r in self._waiting if r.cancelled or r.deadline < now]:
            self._waiting.remove(req)
            if req.cancelled:
                self._finish(req, "cancelled")
            else:
                self._time_out(req)
        while self._waiting and self._free:
            req = self._waiting.popleft()
            if not self._client_alive(req):  # left while it waited: no prefill for nobody
                self._finish(req, "cancelled")
                continue
            req.slot = self._free.pop()
            admit.append(req)
        return admit

    def _step(self, admit: list[Request]) -> None:
        """Drop what left, prefill the admitted, one decode step; a failure outside the per-request
        guards (a bug) fails the requests in flight and the loop goes on."""
        try:
            self._drop_gone()
            if admit:
                self._prefill_all(admit)
            self.stats.max_active = max(self.stats.max_active, len(self._active))
            if self._active:
                self._decode(sorted(self._active.values(), key=lambda r: r.slot))
        except Exception as err:  # noqa: BLE001 (the loop must go on; the requests hear why)
            for req in [*admit, *self._active.values()]:
                self._fail(req, err)
        finally:
            self._flush(force=not self._active)

    def _drop_gone(self) -> None:
        now = time.perf_counter()
        for req in list(self._active.values()):
            if req.cancelled or not self._client_alive(req):
                self._release(req, "cancelled")
            elif req.deadline < now:
                self._time_out(req)

    @staticmethod
    def _client_alive(req: Request) -> bool:
        if req.alive is None:
            return True
        try:
            return bool(req.alive())
        except Exception:  # noqa: BLE001 (a check that fails means the client is gone)
            return False

    def _time_out(self, req: Request) -> None:
        self.stats.timed_out += 1
        waited = time.perf_counter() - req.submitted
        self._release(req, "error", f"the request timed out after {waited:.1f} s", "timeout")

    def _fail(self, req: Request, err: BaseException) -> None:
        self.stats.errors += 1
        self.last_error = f"{type(err).__name__}: {err}"
        self._release(req, "error", self.last_error, "engine_error")

    def _release(self, req: Request, reason: str, error: str | None = None, code: str | None = None) -> None:
        if req.slot >= 0 and self._active.get(req.slot) is req:
            del self._active[req.slot]
        if req.slot >= 0 and req.slot not in self._free and req.slot not in self._active:
            self._free.append(req.slot)
            self._free.sort(reverse=True)
            self.stats.slots_freed += 1
        req.slot = -1
        self._finish(req, reason, error, code)

    def _finish(self, req: Request, reason: str, error: str | None = None, code: str | None = None) -> None:
        if req.finish_reason is not None:
            return
        tail = ""
        if req.tracker is not None and reason in ("stop", "length"):
            try:
                tail, hit = req.tracker.flush()
                reason = "stop" if hit else reason
            except Exception as err:  # noqa: BLE001 (a decode that fails fails this request only)
                reason, error, code = "error", f"{type(err).__name__}: {err}", "engine_error"
        req.finish_reason = reason
        if reason == "cancelled":
            self.stats.cancelled += 1
        else:
            self.stats.finished += 1
        self._send(req, Event(None, tail, reason, error, code))

    def _send(self, req: Request, event: Event) -> None:
        if event.finish_reason is not None or req.per_token:
            self._outbox.append((req, event))
            # an end or a first token goes out with this step; other tokens may wait for stream_interval
            self._urgent = self._urgent or event.finish_reason is not None or len(req.output) == 1

    def _flush(self, force: bool = True) -> None:
        """Hand the gathered events over (`deliver`, else sink by sink): now if `force`, an event is urgent,
        or `stream_interval` has passed since the last hand-over; else keep gathering."""
        now = time.perf_counter()
        if not self._outbox or not (force or self._urgent or now - self._last_flush >= self.stream_interval):
            return
        self._last_flush, self._urgent = now, False
        items, self._outbox = self._outbox, []
        if items and self.deliver is not None:
            self.deliver(items)
            return
        for req, event in items:
            try:
                req.sink(event)
            except Exception:  # noqa: BLE001 (the receiving event loop is closed: the client is gone)
                req.cancelled = True

    # ------------------------------------------------------------------ prefill
    def _setup(self, req: Request) -> None:
        p = req.params
        req.sampling = p.sampling()
        req.generator = (torch.Generator(device=self.device).manual_seed(p.seed)
                         if p.seed is not None and not p.greedy else None)
        req.tracker = TextTracker(self.tok, p.stop, p.mode, p.prefix)
        req.stops = frozenset(p.stop_ids if p.stop_ids is not None else self.stop_ids)
        req.budget = min(p.max_tokens, self.max_len - len(req.prompt))

    def _prefill_all(self, reqs: list[Request]) -> None:
        ready = []
        for req in reqs:
            try:
                self._setup(req)
                ready.append(req)
            except Exception as err:  # noqa: BLE001
                self._fail(req, err)
        for group in self._groups(ready):
            try:
                self._prefill(group)
            except Exception as err:  # noqa: BLE001 (retry alone: only the row that fails gets the error)
                if len(group) == 1:
                    self._fail(group[0], err)
                    continue
                for req in group:
                    try:
                        self._prefill([req])
                    except Exception as err1:  # noqa: BLE001
                        self._fail(req, err1)

    def _groups(self, reqs: list[Request]) -> list[list[Request]]:
        """Prompts by length into batches of at most `prefill_tokens` padded tokens (a longer one alone)."""
        groups: list[list[Request]] = []
        for req in sorted(reqs, key=lambda r: len(r.prompt)):
            if groups and (len(groups[-1]) + 1) * len(req.prompt) <= self.prefill_tokens:
                groups[-1].append(req)
            else:
                groups.append([req])
        return groups

    def _prefill(self, group: list[Request]) -> None:
        """One left-padded batch through `ilm.model.generate.prefill`, then each row into its slot."""
        B, T = len(group), max(len(r.prompt) for r in group)
        cfg = self.model.config
        tokens = torch.full((B, T), cfg.pad_token_id, dtype=torch.long, device=self.device)
        valid = torch.zeros(B, T, dtype=torch.bool, device=self.device)
        for i, req in enumerate(group):
            tokens[i, T - len(req.prompt):] = torch.tensor(req.prompt, device=self.device)
            valid[i, T - len(req.prompt):] = True
        cache = KVCache(cfg, B, T, self.device, self.model.output.weight.dtype)
        chunk = max(self.prefill_tokens // B, 1)
        logits = prefill(self.model, tokens, valid, cache, chunk, causal=True)  # the rule decoding continues
        self.stats.prefill_calls += math.ceil(T / chunk)
        self.stats.prefill_rows += B
        self.stats.prefill_max_rows = max(self.stats.prefill_max_rows, B)
        for i, req in enumerate(group):
            P = len(req.prompt)
            for layer in range(cfg.num_layers):
                self.cache.store(req.slot, layer, cache.k[layer][i, :, T - P:], cache.v[layer][i, :, T - P:])
            req.length = P
            self._active[req.slot] = req
        self._take_all(group, logits)

    # ------------------------------------------------------------------ decode
    def _decode(self, reqs: list[Request]) -> None:
        """One batched decode step for `reqs`; if it fails, each row alone (so only a failing row fails)."""
        try:
            logits = self._forward(reqs)
        except Exception as err:  # noqa: BLE001
            if len(reqs) == 1:
                self._fail(reqs[0], err)
                return
            for req in reqs:
                self._decode([req])
            return
        for req in reqs:
            req.length += 1
        self._take_all(reqs, logits)

    def _forward(self, reqs: list[Request]) -> torch.Tensor:
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
        return logits

    def _take_all(self, reqs: list[Request], logits: torch.Tensor) -> None:
        """Each row's next token: greedy rows by one argmax over the batch, sampled ones with their own
        generators."""
        greedy = logits.argmax(dim=-1).tolist() if any(r.sampling.greedy for r in reqs) else None
        for i, req in enumerate(reqs):
            self._take(req, logits[i : i + 1], greedy[i] if greedy is not None and req.sampling.greedy else None)

    def _take(self, req: Request, logits: torch.Tensor, token: int | None = None) -> None:
        """Sample this request's next token from its (1, V) logits (or take `token`, its argmax), send it,
        end the request if done."""
        if req.cancelled:
            self._release(req, "cancelled")
            return
        try:
            if token is None:
                token = int(sample_next(logits, req.sampling, req.generator)[0])
            text, hit = ("", False) if token in req.stops else req.tracker.push(token)
        except Exception as err:  # noqa: BLE001
            self._fail(req, err)
            return
        if req.first_token is None:
            req.first_token = time.perf_counter()
        req.output.append(token)
        req.budget -= 1
        self.stats.tokens += 1
        self._send(req, Event(token, text))
        if token in req.stops or hit:
            self._release(req, "stop")
        elif req.budget <= 0:
            self._release(req, "length")

