"""The encoder behind ilm's tokenizer: tiktoken's BPE engine run on ilm's own vocabulary.

ilm's vocabularies are byte-level BPE whose merge order is their id order, so the id is a tiktoken
rank. The two engines differ in what they merge inside a pre-token: HF merges the adjacent pair with the
earliest merge rule; tiktoken merges the adjacent pair whose concatenation has the lowest rank, whatever
the two parts are. They give the same ids when

1. a rule's position in the merge list is its result's id order (one rule per multi-byte token), and
2. every token's rule is the split tiktoken's own rule reaches on the token's bytes using only lower
   ranks (the replay of `base.recover_merges`).

Why that suffices: suppose tiktoken, somewhere, first joins parts x + y = t that are not t's rule.
Every merge so far inside t's bytes stayed inside them (tokens only grow, and x and y lie inside), and
each was the lowest candidate inside them at its time, so the run inside t's bytes is a prefix of
tiktoken's run on t's bytes alone. That run, by 2., reaches t's rule before any rank >= t's and then
joins it, so it never holds x, y: contradiction. So tiktoken only ever joins rule pairs, whose ranks
order as the rules do (1.), with the same leftmost tie-break as HF: the ids are equal. Both engines
also take a pre-token that is itself a token whole (HF's `ignore_merges`).

`check` verifies 1. and 2. (plus the pre-tokenizer, model options and all 256 bytes) on a
`tokenizer.json` state and names the first thing that fails; `HFTokenizer` then keeps encoding with HF
`tokenizers` and records why. The split pattern is cl100k's in tiktoken's own syntax, in the faster
equivalent form `base.FAST_PATTERN` (tests pin its ids against HF's Oniguruma form).

tiktoken's regex engine gives up (a Rust panic, printed on stderr) on a whitespace run of about a
million characters, with cl100k's own pattern too; such a text (or cut piece) is encoded by HF
`tokenizers` instead, which gives the same ids.

Speed: tiktoken releases the GIL while encoding, so long texts are cut at safe boundaries and batches
are cut into contiguous runs of documents, both encoded on a pool of threads (one pool task per run of
documents, where tiktoken's own batch submits one task per document).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import tiktoken

from ilm.tokenizer import base as _base

# A newline followed by a non-space character always ends a cl100k pre-token (no alternative of the
# split pattern continues past newlines into other text), and no control token holds a newline, so a
# long text cut there encodes to the same ids piece by piece -- in parallel.
_SAFE_CUT = re.compile(r"\n(?=\S)")
PARALLEL_CHARS = 1 << 16

_pool: ThreadPoolExecutor | None = None
_pool_pid = -1


def threads() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pool() -> ThreadPoolExecutor:
    """One encoding thread pool per process (recreated after a fork: a child inherits dead threads)."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(threads(), thread_name_prefix="ilm-encode")
        _pool_pid = os.getpid()
    return _pool


def split_for_parallel(text: str, pieces: int) -> list[str]:
    """Cut `text` into about `pieces` parts at safe boundaries (see `_SAFE_CUT`); joins back to `text`."""
    size = max(PARALLEL_CHARS // 2, len(text) // max(1, pieces))
    out, start = [], 0
    while len(text) - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if m is None:
            break
        out.append(text[start : m.end()])
        start = m.end()
    out.append(text[start:])
    return out


def _reference_pre_tokenizer() -> dict:
    from tokenizers import Tokenizer, models

    from ilm.tokenizer.build import pre_tokenizer

    ref = Tokenizer(models.BPE())
    ref.pre_tokenizer = pre_tokenizer()
    return json.loads(ref.to_str())["pre_tokenizer"]


def _merge_pair(m: str | list[str]) -> tuple[str, str]:
    a, b = m if isinstance(m, list) else m.split(" ", 1)
    return a, b


def check(state: dict) -> tuple[dict[bytes, int] | None, str]:
    """(token bytes -> rank, "") if tiktoken gives exactly HF's ids for this `tokenizer.json` state,
    else (None, the reason)."""
    model = state.get("model") or {}
    if model.get("type") != "BPE":
        return None, f"model is {model.get('type')}, not BPE"
    for key, want in (("ignore_merges", True), ("dropout", None), ("byte_fallback", False)):
        if model.get(key) != want:
            return None, f"BPE option {key} is {model.get(key)!r}, tiktoken needs {want!r}"
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None, "BPE uses a subword prefix or suffix"
    if state.get("normalizer") is not None:
        return None, "the tokenizer has a normalizer"
    if state.get("pre_tokenizer") != _reference_pre_tokenizer():
        return None, "the pre-tokenizer is not ilm's (cl100k split + byte level)"
    added = state.get("added_tokens") or []
    if any(not a.get("special") for a in added):
        return None, "it has non-special added tokens (HF splits them out even in plain text)"
    added_names = {a["content"] for a in added}
    ranks: dict[bytes, int] = {}
    for s, i in model["vocab"].items():
        if s in added_names:
            continue
        try:
            ranks[_base.from_bytelevel(s)] = i
        except KeyError:
            return None, f"vocabulary entry {s!r} is not byte-level"
    if len(ranks) != sum(1 for s in model["vocab"] if s not in added_names):
        return None, "two vocabulary entries have the same bytes"
    if {a["id"] for a in added} & set(ranks.values()):
        return None, "a control token shares an id with an ordinary token"
    if sum(len(t) == 1 for t in ranks) != 256:
        return None, "not all 256 single bytes are tokens"
    merges, last = [], -1
    for m in model.get("merges", []):
        try:
            a, b = (_base.from_bytelevel(p) for p in _merge_pair(m))
        except KeyError:
            return None, f"merge {m!r} is not byte-level"
        r = ranks.get(a + b)
        if a not in ranks or b not in ranks or r is None:
            return None, f"merge {a!r} + {b!r} joins or makes a string outside the vocabulary"
        if r <= last:
            return None, f"merge order is not id order at {a + b!r} (id {r} after {last})"
        last = r
        merges.append((a, b))
    if len(merges) != len(ranks) - 256:
        return None, f"{len(ranks) - 256 - len(merges)} multi-byte tokens have no merge"
    try:
        replayed = _base.recover_merges(sorted(ranks, key=ranks.__getitem__))
    except ValueError as err:
        return None, str(err)
    for (a, b), (c, d) in zip(merges, replayed):
        if (a, b) != (c, d):
            return None, f"token {a + b!r} is merged from {a!r} + {b!r} but tiktoken's rule reaches {c!r} + {d!r}"
    return ranks, ""


def encoding(ranks: dict[bytes, int], control_ids: dict[str, int]) -> tiktoken.Encoding:
    """A tiktoken Encoding over ilm's ranks (ids), cl100k's split pattern and the control tokens."""
    return tiktoken.Encoding("ilm", pat_str=_base.FAST_PATTERN, mergeable_ranks=ranks,
                             special_tokens=dict(control_ids))


class FastEncoder:
    """Encode with a tiktoken Encoding: long texts and batches on all cores (see module docstring)."""

    def __init__(self, enc: tiktoken.Encoding, fallback: Callable[[str, bool], list[int]]) -> None:
        """`fallback(text, special)`: the same ids by another engine, for texts tiktoken cannot split."""
        self.enc = enc
        self.fallback = fallback

    def _one(self, special: bool) -> Callable[[str], list[int]]:
        enc, fallback = self.enc, self.fallback
        if special:
            def tik(text: str) -> list[int]:
                return enc.encode(text, allowed_special="all", disallowed_special=())
        else:
            tik = enc.encode_ordinary

        def one(text: str) -> list[int]:
            try:
                return tik(text)
            except BaseException as err:  # a Rust panic is a BaseException: match it by name
                if type(err).__name__ != "PanicException":
                    raise
                return fallback(text, special)

        return one

    def encode(self, text: str, head: list[int], special: bool) -> list[int]:
        """Ids of `text` after `head`; long texts are cut (`split_for_parallel`) and encoded in parallel."""
        one = self._one(special)
        n = threads()
        if len(text) < PARALLEL_CHARS or n == 1:
            return head + one(text) if head else one(text)
        ids = list(head)
        for part in pool().map(one, split_for_parallel(text, 4 * n)):
            ids += part
        return ids

    def encode_batch(self, texts: list[str], head: list[int], special: bool) -> list[list[int]]:
        """`encode` of each text (whole, one thread each), runs of texts spread over the pool."""
        one = self._one(special)

        def run(chunk: list[str]) -> list[list[int]]:
            return [head + one(t) for t in chunk] if head else [one(t) for t in chunk]

        n = threads()
        if n == 1 or len(texts) < 2:
            return run(texts)
        # Contiguous runs of about equal characters, a few per thread (so one long document does not
        # leave the other threads idle for long).
        total = sum(map(len, texts))
        step = max(1, total // (4 * n))
        chunks, start, acc = [], 0, 0
        for i, t in enumerate(texts):
            acc += len(t)
            if acc >= step:
                chunks.append(texts[start : i + 1])
                start, acc = i + 1, 0
        if start < len(texts):
            chunks.append(texts[start:])
        out: list[list[int]] = []
        for part in pool().map(run, chunks):
            out += part
        return out
