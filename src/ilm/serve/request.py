"""What a request is to the engine: its sampling parameters, its events, its state, and the engine's counters.

Values are checked here too (the HTTP layer checks them first, with messages that name the field): a
`Params` the engine cannot run (a seed torch cannot hold, a non-finite temperature) is refused when made.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ilm.model.generate import Sampling
from ilm.serve.detok import TextTracker

# Below this a temperature is greedy: logits / 1e-45 overflow to inf and the softmax turns into NaN.
MIN_TEMPERATURE = 1e-4
# Below this a top_p is greedy too (only the likeliest token is left): 1e-300 rounds to 0 in float32, which
# would drop every token and leave the softmax nothing.
MIN_TOP_P = 1e-8
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


class PromptTooLong(ValueError):
    """The prompt does not fit a cache slot (the server answers 400 context_length_exceeded)."""


class QueueFull(RuntimeError):
    """`max_queue` requests already wait (the server answers 429 with Retry-After)."""


class Stopped(RuntimeError):
    """The engine is stopping or stopped (the server answers 503)."""


@dataclass(frozen=True)
class Params:
    """Per-request sampling: temperature 0 (or below MIN_TEMPERATURE, or top_p below MIN_TOP_P) = greedy; `stop` strings end the text
    before them. `mode` "chat" reads the output as the chat format (tool calls are not text), "plain" keeps
    every ordinary id; `prefix` ids were written by the server before the output (a forced call header)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    stop_ids: tuple[int, ...] | None = None  # None = the engine's (tokenizer's) stop ids
    seed: int | None = None
    mode: str = "chat"
    prefix: tuple[int, ...] = ()
    timeout: float | None = None  # seconds from submission; None = the engine's

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ValueError(f"seed must be in [-2**63, 2**64 - 1], got {self.seed}")
        if self.mode not in ("chat", "plain"):
            raise ValueError(f"mode must be 'chat' or 'plain', got {self.mode!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE or self.top_p < MIN_TOP_P

    def sampling(self) -> Sampling:
        return Sampling(max_new_tokens=self.max_tokens, greedy=self.greedy,
                        temperature=1.0 if self.greedy else self.temperature, top_p=self.top_p, seed=self.seed)


@dataclass
class Event:
    """One new token for a request (`token` None on the final event), the text it adds, and the end.
    `code` says why a request failed: "engine_error", "timeout" or "shutting_down"."""

    token: int | None
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None
    code: str | None = None


_ids = itertools.count()


@dataclass
class Request:
    prompt: list[int]
    params: Params
    sink: Callable[[Event], None]
    alive: Callable[[], bool] | None = None  # False once the client is gone (checked before every step)
    per_token: bool = True  # an event per token (streaming); False: only the final event
    id: int = field(default_factory=_ids.__next__)
    output: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    deadline: float = math.inf
    first_token: float | None = None
    # engine-side state
    slot: int = -1
    length: int = 0  # tokens written into the slot's cache
    budget: int = 0  # tokens this request may still produce
    generator: torch.Generator | None = None
    sampling: Sampling | None = None
    tracker: TextTracker | None = None
    stops: frozenset[int] = frozenset()

    @property
    def text(self) -> str:
        """The visible text so far (before any stop string), as sent."""
        return self.tracker.text if self.tracker is not None else ""

    @property
    def stopped_by_string(self) -> bool:
        return self.tracker is not None and self.tracker.stopped


@dataclass
class Stats:
    """Counters the tests read instead of wall time."""

    requests: int = 0
    finished: int = 0
    cancelled: int = 0
    errors: int = 0  # requests failed inside the engine (the loop went on)
    timed_out: int = 0
    rejected: int = 0  # refused because the queue was full
    prefill_calls: int = 0  # prefill forwards (a batch of prompts, or one chunk of a long one)
    prefill_rows: int = 0  # prompts prefilled
    prefill_max_rows: int = 0  # most prompts prefilled in one forward
    decode_steps: int = 0
    decode_rows: int = 0  # sum over decode steps of the rows in the step
    tokens: int = 0  # output tokens produced
    slots_freed: int = 0
    max_active: int = 0
    max_waiting: int = 0

    @property
    def forward_calls(self) -> int:
        return self.prefill_calls + self.decode_steps

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["forward_calls"] = self.forward_calls
        return d
