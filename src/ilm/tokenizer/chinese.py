"""Chinese tokens: read a Chinese source, then continue BPE from the base vocabulary.

Continuing BPE (rather than training a separate Chinese BPE and pasting its tokens on) is what keeps
every new token reachable: each word is first split exactly as the base tokenizer splits it, and
every learned merge joins two tokens that really sit side by side there. Appended after the base
merges, the new merges fire only once no base merge applies, which is the state they were learned
in, so encoding replays training.

A merge is admissible only if it makes a new string (no second path to an existing token) that
contains a Han character or consists of non-ASCII bytes only. So English text and code, which never
contain such pairs, keep exactly the base (cl100k) segmentation.

Sources: a weighted word list (`word freq [tag]` per line, as jieba's dictionary, the default) or raw
text (every line is split with the base split pattern; each Chinese pre-token counts once). Only
pre-tokens that contain a Han character are learned from.
"""

from __future__ import annotations

import heapq
import importlib.resources
import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import regex

_HAN = regex.compile(r"\p{Han}")
_WORDFREQ = regex.compile(r"^(\S+) ([0-9]+)(?: \S+)?$")


def default_chinese_path() -> Path:
    """jieba's dictionary (word, frequency, part of speech), shipped inside the `jieba` package."""
    return Path(str(importlib.resources.files("jieba") / "dict.txt"))


@dataclass
class CorpusStats:
    """What happened to each line of a source file; bad lines are counted, never fatal."""

    lines: int = 0
    used: int = 0
    empty: int = 0
    invalid_utf8: int = 0
    malformed: int = 0  # word-list lines that are not `word freq [tag]`
    chunks: int = 0  # distinct Chinese pre-tokens learned from
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def detect_format(path: str | Path, probe: int = 200) -> str:
    """'wordfreq' if the first non-empty lines all look like `word freq [tag]`, else 'text'."""
    seen = 0
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            if not _WORDFREQ.match(line):
                return "text"
            seen += 1
            if seen >= probe:
                break
    return "wordfreq" if seen else "text"


def read_source(
    paths: Iterable[str | Path],
    split: Callable[[str], list[str]],
    fmt: str = "auto",
    stats: CorpusStats | None = None,
) -> tuple[Counter[str], CorpusStats]:
    """Weighted Chinese pre-tokens from word lists or raw text; `split` is the base pre-tokenizer."""
    if fmt not in ("auto", "wordfreq", "text"):
        raise ValueError(f"unknown Chinese source format {fmt!r}; use auto, wordfreq or text")
    stats = stats or CorpusStats()
    counts: Counter[str] = Counter()
    for path in paths:
        path = Path(path)
        kind = detect_format(path) if fmt == "auto" else fmt
        stats.files.append(f"{path} ({kind})")
        with open(path, "rb") as f:
            for raw in f:
                stats.lines += 1
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    stats.invalid_utf8 += 1
                    continue
                if not line:
                    stats.empty += 1
                    continue
                if kind == "wordfreq":
                    m = _WORDFREQ.match(line)
                    if not m or int(m.group(2)) <= 0:
                        stats.malformed += 1
                        continue
                    text, weight = m.group(1), int(m.group(2))
                else:
                    text, weight = line, 1
                stats.used += 1
                for chunk in split(text):
                    if _HAN.search(chunk):
                        counts[chunk] += weight
    stats.chunks = len(counts)
    return counts, stats


def admissible(merged: bytes) -> bool:
    """A Chinese-stage token must hold a Han character or be made of non-ASCII bytes only."""
    if all(b >= 0x80 for b in merged):
        return True
    return bool(_HAN.search(merged.decode("utf-8", "ignore")))


def _merge_word(
    seq: list[int], a: int, b: int, new: int, f: int, count: dict[tuple[int, int], int]
) -> tuple[list[int], list[tuple[int, int]]]:
    """Merge (a, b) -> new left to right in one word; update pair counts by weight `f` locally.

    Returns the new word and the pairs that contain `new` (the only pairs whose count can grow).
    """
    out: list[int] = []
    grown: list[tuple[int, int]] = []
    i, n = 0, len(seq)
    just_merged = False
    while i < n:
        if i + 1 < n and seq[i] == a and seq[i + 1] == b:
            if out:
                if not just_merged:  # after a merge, the old left pair (b, a) was removed as its right pair
                    count[(out[-1], a)] -= f
                p = (out[-1], new)
                count[p] = count.get(p, 0) + f
                grown.append(p)
            count[(a, b)] -= f
            if i + 2 < n:
                count[(b, seq[i + 2])] -= f
                if not (i + 3 < n and seq[i + 2] == a and seq[i + 3] == b):
                    p = (new, seq[i + 2])
                    count[p] = count.get(p, 0) + f
                    grown.append(p)
            out.append(new)
            i += 2
            just_merged = True
        else:
            out.append(seq[i])
            i += 1
            just_merged = False
    return out, grown


def continue_bpe(
    words: list[list[int]],
    weights: list[int],
    token_bytes: dict[int, bytes],
    first_new_id: int,
    n_new: int,
    on_merge: Callable[[], None] | None = None,
) -> list[tuple[int, int, int]]:
    """Learn `n_new` merges on pre-split words; returns (left id, right id, new id) in merge order.

    `token_bytes` (id -> bytes) is extended in place. Pair counts are updated incrementally, and a
    lazy max-heap (stale entries re-pushed when popped) picks the most frequent pair; ties go to the
    smaller ids, so the result is deterministic.
    """
    words = [list(w) for w in words]
    vocab = {b: i for i, b in token_bytes.items()}
    count: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, (seq, f) in enumerate(zip(words, weights)):
        for p in itertools.pairwise(seq):
            count[p] = count.get(p, 0) + f
            where.setdefault(p, set()).add(w)
    heap = [(-c, p) for p, c in count.items()]
    heapq.heapify(heap)
    banned: set[tuple[int, int]] = set()
    merges: list[tuple[int, int, int]] = []
    next_id = first_new_id
    while len(merges) < n_new and heap:
        neg, pair = heapq.heappop(heap)
        c = count.get(pair, 0)
        if c <= 0 or pair in banned:
            continue
        if c != -neg:
            heapq.heappush(heap, (-c, pair))
            continue
        a, b = pair
        merged = token_bytes[a] + token_bytes[b]
        if merged in vocab or not admissible(merged):
            banned.add(pair)
            continue
        new = next_id
        next_id += 1
        token_bytes[new] = merged
        vocab[merged] = new
        merges.append((a, b, new))
        if on_merge is not None:  # a progress bar
            on_merge()
        touched: set[tuple[int, int]] = set()
        for w in where.pop(pair, ()):
            seq = words[w]
            out, grown = _merge_word(seq, a, b, new, weights[w], count)
            if len(out) == len(seq):
                continue
            for p in grown:
                where.setdefault(p, set()).add(w)
                touched.add(p)
            words[w] = out
        for p in touched:
            heapq.heappush(heap, (-count[p], p))
    if len(merges) < n_new:
        raise ValueError(
            f"the Chinese source supports only {len(merges)} new tokens, {n_new} were asked for; "
            "pass a larger Chinese corpus or a smaller --vocab-size"
        )
    return merges
