"""Batched generation with a preallocated KV cache: greedy, temperature, top-k, top-p, stop ids, streaming.

Prompts of different lengths are left-padded into one batch; padded keys are masked out and positions
count real tokens only, so every row decodes exactly as it would alone. There is no length cap: the KV
cache is sized to the request (prompt + max_new_tokens), long prompts are prefilled in chunks of
`Sampling.prefill_chunk` tokens, and the limit is a memory estimate (`ilm.model.memory`) checked before
anything is allocated. Dynamic NTK extrapolates at any length, decoding from the cache at O(n) per token
past `max_position_embeddings` (the causal rule, `ilm.model.rope`; `Sampling.ntk="recompute"` re-runs the
whole sequence every token instead, the whole-sequence rule of a full forward); plain or linear RoPE past the
trained context runs too (extrapolation experiments compare against it), with a warning. The recipe's rollout default is
top_p = 0.9 (docs/recipe.md, Online RLHF); generation stops at `</s>` or `<|im_end|>` (the config's stop ids).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ilm.model.attention import AttnBatch, prefill_backend, prefill_chunk_batch
from ilm.model.cache import KVCache
from ilm.model.internlm2 import InternLM2
from ilm.model.memory import check_fits, generation_estimate

NTK_MODES = ("cached", "recompute")


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128
    greedy: bool = False
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 0  # 0 = off
    stop_ids: tuple[int, ...] | None = None  # None = the model config's stop ids
    seed: int | None = None
    cuda_graph: bool = True  # on CUDA, replay the decode step as one CUDA graph (no effect on CPU)
    prefill_chunk: int = 2048  # prompt tokens per prefill forward (bounds activation memory on long prompts)
    # dynamic NTK past max_position_embeddings: "cached" = the causal rule, exact from the cache, O(n) per token;
    # "recompute" = a fresh prefill every token (every position with the newest length's base; O(n^2) per token)
    ntk: str = "cached"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (or use greedy=True), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {self.prefill_chunk}")
        if self.ntk not in NTK_MODES:
            raise ValueError(f"ntk must be one of {NTK_MODES}, got {self.ntk!r}")


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens strictly before it already cover top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= sampling.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return draw(logits.softmax(dim=-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of (B, V) probabilities: inverse-CDF sampling, one uniform number per row.

    Why not `torch.multinomial`: for one sample it draws V exponential numbers per row (the exponential-race
    trick), a third of a CPU decode step at 64 rows x 512 tokens; the cumulative sum and a binary search draw
    from the same distribution with B random numbers. On CUDA multinomial is one fast kernel and stays.
    Non-finite or negative probabilities are refused, as multinomial refuses them."""
    if probs.device.type == "cuda":
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all()) or bool((probs < 0).any()) or not bool((total > 0).all()):
        raise RuntimeError("probability tensor contains either inf, nan or element < 0 (or sums to 0)")
    # kept strictly below the total (rand * total can round up to it): the first cdf entry above u is then a
    # token with mass, the last one with mass at the very top
    u = torch.minimum(torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64) * total,
                      torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


def _check_prompts(model: InternLM2, prompts: Sequence[Sequence[int]]) -> None:
    if not prompts:
        raise ValueError("no prompts given")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; start it with the BOS id {model.config.bos_token_id}")
        bad = [t for t in p if not 0 <= t < model.config.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside [0, {model.config.vocab_size}): {bad[:5]}")


_STATIC_ON_CPU = False  # tests flip this to run the static (graph-shaped) decode step eagerly on CPU


class _GraphedDecode:
    """The single-token decode step captured once as a CUDA graph and replayed every step.

    Small-batch decoding on a GPU is bound by kernel launches, not arithmetic; one graph replay replaces
    hundreds of launches. Shapes are made static by attending over the whole preallocated cache under a
    key mask, and writing K/V at a device-side index.
    """

    def __init__(self, model: InternLM2, cache: KVCache, batch_size: int, capture: bool = True):
        device = model.output.weight.device
        self.model, self.cache = model, cache
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.mask = torch.ones(batch_size, 1, 1, cache.max_len, dtype=torch.bool, device=device)
        # warm up and capture writing into the last slot, which decoding never needs (see generate_stream)
        self.index = torch.full((1,), cache.max_len - 1, dtype=torch.long, device=device)
        self.graph = None
        if not capture:  # same static step, run eagerly (lets the CPU tests check it)
            return
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()

    def _step(self) -> torch.Tensor:
        length = self.cache.length
        self.cache.index = self.index
        out = self.model(self.token, self.positions, AttnBatch(mask=self.mask), self.cache)[:, -1]
        # the python-side counter is kept by __call__ (a replay runs no python), and the cache goes back
        # to its ordinary mode for any later prefill
        self.cache.length, self.cache.index = length, None
        return out

    def __call__(self, token: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        self.index.fill_(self.cache.length)
        self.token.copy_(token)
        self.positions.copy_(positions)
        self.mask.copy_(valid[:, None, None, :])
        if self.graph is None:
            self.logits = self._step()
        else:
            self.graph.replay()
        self.cache.length += 1
        return self.logits


PREFILL_BACKEND: str | None = None  # None: `prefill_backend(device)`; tests set "flex" to run the GPU path on CPU


def check_memory(model: InternLM2, batch: int, total: int, chunk: int) -> None:
    """Refuse, naming the estimate and the free memory, a request whose KV cache + chunk activations do not fit."""
    device = model.output.weight.device
    # both prefill backends hold a chunk x keys boolean pattern at some point (SDPA's mask; FlexAttention's
    # block mask is built from one), so the estimate counts it either way
    est = generation_estimate(model.config, batch, total, chunk, model.output.weight.dtype)
    check_fits(est, device, f"generating {batch} row(s) of up to {total:,} positions",
               "shorten the prompt, lower max_new_tokens, the batch size or prefill_chunk")


@torch.inference_mode()
def prefill(
    model: InternLM2, tokens: torch.Tensor, valid: torch.Tensor, cache: KVCache, chunk: int,
    backend: str | None = None, causal: bool = False,
) -> torch.Tensor:
    """Run left-padded rows `tokens` (B, T) into an empty `cache`, `chunk` slots per forward; (B, V) last logits.

    Positions count real tokens only. Under dynamic NTK every chunk rotates with the RoPE base of the whole
    length each row has here (`rope_len`), so the result equals one full forward over the T slots, not a
    series of shorter sequences with smaller bases; with `causal`, each position takes the base of its own
    length instead (the rule cached decoding continues exactly; `ilm.model.rope`).
    """
    cache.reset()
    T = tokens.shape[1]
    backend = backend or PREFILL_BACKEND or prefill_backend(tokens.device)
    if model.rope.kind == "dynamic" and T > model.config.max_position_embeddings:
        backend = "sdpa"  # keys re-rotated per query (or row) take an explicit pattern, not a block mask
    positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
    cache.offset = (valid.long().cumsum(dim=1) == 0).sum(dim=1)  # left padding: slot j holds position j - offset
    rope_len = None if causal else valid.sum(dim=1)
    whole = bool(valid.all()) and T <= chunk
    logits = None
    for start in range(0, T, chunk):
        end = min(start + chunk, T)
        if whole:  # one unpadded chunk: plain causal attention, the fastest kernel everywhere
            batch = AttnBatch()
        elif backend == "flex":  # attend over the whole preallocated cache: one key length per request
            batch = prefill_chunk_batch(valid, start, end, "flex", cache.max_len)
            cache.index = torch.arange(start, end, device=tokens.device)
        else:
            batch = prefill_chunk_batch(valid, start, end, "sdpa")
        try:
            logits = model(tokens[:, start:end], positions[:, start:end], batch, cache, last_only=True,
                           rope_len=rope_len)[:, -1]
        finally:
            cache.index = None
    return logits


@torch.inference_mode()
def generate_stream(
    model: InternLM2, prompts: Sequence[Sequence[int]], sampling: Sampling = Sampling(),
    on_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> Iterator[list[int | None]]:
    """Yield, per decoding step, one new token id per prompt (None once that prompt has stopped).

    A row stops after emitting a stop id (which is yielded) or at `max_new_tokens`; there is no length cap
    beyond memory (`check_memory`: a clear error before anything is allocated). Under dynamic NTK, past
    `max_position_embeddings` each step decodes from the cache by the causal rule (its logits equal
    `model(ids, causal_ntk=True)` at that position); with `sampling.ntk == "recompute"` every step is a fresh
    (chunked) prefill instead, equal to a full forward `model(ids)` at every length.

    `on_step(logits, tokens)`, if given, sees each step's (B, V) logits and the (B,) ids drawn from them
    (rows already stopped hold the pad id) before the step is yielded: RLHF rollouts read the sampled
    tokens' log-probabilities there. It observes only; the tokens do not change.
    """
    _check_prompts(model, prompts)
    cfg = model.config
    device = model.output.weight.device
    stop_ids = torch.tensor(sampling.stop_ids if sampling.stop_ids is not None else cfg.stop_token_ids, device=device)
    B, P = len(prompts), max(len(p) for p in prompts)
    steps = sampling.max_new_tokens
    total = P + steps  # the KV cache holds exactly the request
    recompute = sampling.ntk == "recompute"
    check_memory(model, B, total, sampling.prefill_chunk)
    if model.rope.kind != "dynamic" and total > cfg.max_context:
        warnings.warn(f"generating up to {total} positions with {model.rope.kind or 'plain'} RoPE, past the "
                      f"{cfg.max_context} it was built for: expect degraded output (dynamic NTK extrapolates)",
                      stacklevel=2)
    tokens = torch.full((B, total), cfg.pad_token_id, dtype=torch.long, device=device)
    valid = torch.zeros(B, total, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p) : P] = torch.tensor(p, device=device)
        valid[i, P - len(p) : P] = True
    lengths = valid.sum(dim=1)
    cache = KVCache(cfg, B, total, device, model.output.weight.dtype)
    generator = torch.Generator(device=device).manual_seed(sampling.seed) if sampling.seed is not None else None
    dynamic = model.rope.kind == "dynamic"

    def refill(end: int) -> torch.Tensor:
        return prefill(model, tokens[:, :end], valid[:, :end], cache, sampling.prefill_chunk, causal=not recompute)

    logits = refill(P)
    padded = bool((~valid[:, :P]).any())
    graphed = None
    # dynamic NTK checks on the host whether a query is past the window: no graph capture
    if steps > 1 and not dynamic and (sampling.cuda_graph and device.type == "cuda" or _STATIC_ON_CPU):
        graphed = _GraphedDecode(model, cache, B, capture=device.type == "cuda")
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(steps):
        token = sample_next(logits, sampling, generator)
        token = torch.where(done, torch.full_like(token, cfg.pad_token_id), token)
        if on_step is not None:
            on_step(logits, token)
        yield [None if d else t for t, d in zip(token.tolist(), done.tolist())]
        done = done | torch.isin(token, stop_ids)
        if bool(done.all()) or step == steps - 1:
            return
        end = P + step + 1
        tokens[:, end - 1] = token
        valid[:, end - 1] = True
        lengths = lengths + 1
        if recompute and dynamic and bool((lengths > cfg.max_position_embeddings).any()):
            logits = refill(end)
            continue
        if graphed is not None:
            logits = graphed(token[:, None], (lengths - 1)[:, None], valid)
            continue
        batch = AttnBatch(mask=valid[:, None, None, :end]) if padded else AttnBatch()
        logits = model(token[:, None], (lengths - 1)[:, None], batch, cache)[:, -1]


def generate(
    model: InternLM2, prompts: Sequence[Sequence[int]], sampling: Sampling = Sampling(), keep_stop: bool = False
) -> list[list[int]]:
    """New tokens per prompt; the stop id that ended a row is dropped unless `keep_stop`."""
    out: list[list[int]] = [[] for _ in prompts]
    stops = set(sampling.stop_ids if sampling.stop_ids is not None else model.config.stop_token_ids)
    for step in generate_stream(model, prompts, sampling):
        for row, token in zip(out, step):
            if token is not None and (keep_stop or token not in stops):
                row.append(token)
    return out


@torch.inference_mode()
def greedy_recompute(model: InternLM2, prompt: Sequence[int], max_new_tokens: int, causal_ntk: bool = False
                     ) -> list[int]:
    """Reference decoder with no cache: rerun the whole sequence every step (tests and debugging); `causal_ntk`:
    the rule cached decoding follows under dynamic NTK (else the whole-sequence rule of `Sampling.ntk="recompute"`)."""
    seq = list(prompt)
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([seq], device=model.output.weight.device), causal_ntk=causal_ntk)[0, -1]
        seq.append(int(logits.argmax()))
    return seq[len(prompt):]
