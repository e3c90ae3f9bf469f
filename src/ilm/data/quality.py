"""Rule-based quality filters for English and Chinese: Gopher quality, Gopher repetition, C4 line rules.

Chinese (and other unspaced scripts) count each CJK character as a word; rules that only make sense for
spaced words (mean word length) are skipped there. Thresholds are Gopher's (Rae et al. 2021) and C4's
(Raffel et al. 2020) published values. Repetition statistics use vectorised n-gram hashes so a 50 MB
document costs seconds, not minutes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from operator import methodcaller
from typing import ClassVar

import numpy as np

from ilm.data.base import Filter, Map, cjk_fraction, tokens
from ilm.data.document import Document

EN_STOP = ("the", "be", "to", "of", "and", "that", "have", "with")
ZH_STOP = ("的", "了", "是", "在", "和", "有", "我", "不", "这", "也")
_EN_STOP, _ZH_STOP = frozenset(EN_STOP), frozenset(ZH_STOP)
BULLETS = ("•", "●", "○", "■", "□", "▪", "◦", "-", "*", "·", "‣", "⁃")
ELLIPSES = ("...", "…", "。。。")


_ALPHA = re.compile(r"[^\W\d_]")
_WORDISH = re.compile(r"[^\W_]")  # a letter or a digit
_EDGES = re.compile(r"^[\W_]+|[\W_]+$")  # punctuation and symbols around a word: "(the," -> "the"


_LAST_FRACTION: list = [None, 0.0]


def _cjk_fraction(text: str) -> float:
    """`cjk_fraction`, remembered for the last text (the filters below ask in turn about one document)."""
    if _LAST_FRACTION[0] is not text:
        _LAST_FRACTION[0], _LAST_FRACTION[1] = text, cjk_fraction(text)
    return _LAST_FRACTION[1]


def _is_cjk(doc: Document) -> bool:
    lang = doc.metadata.get("language")
    if lang in ("zh", "ja", "ko", "th"):
        return True
    if lang is not None and lang not in ("zh", "ja", "ko", "th"):
        return _cjk_fraction(doc.text) >= 0.5
    return _cjk_fraction(doc.text) >= 0.3


_LAST_WORDS: list = [None, None, None]


def _words(text: str, cjk: bool) -> list[str]:
    """`tokens(text, cjk)`, remembered for the last text: Gopher quality and repetition run back to back on
    the same document, and splitting it is a good part of their cost. The list must not be modified."""
    last = _LAST_WORDS
    if last[0] is text and last[1] == cjk:  # the same str object: the same words
        return last[2]
    words = tokens(text, cjk)
    last[0], last[1], last[2] = text, cjk, words
    return words


@dataclass
class GopherQuality(Filter):
    """Gopher's document rules: length, word length, symbols, bullets, ellipses, alphabetic words, stop words."""

    type: ClassVar[str] = "gopher_quality"
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    min_alpha_words: float = 0.8
    min_stop_words: int = 2

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        cjk = _is_cjk(doc)
        tokens_ = _words(text, cjk)
        distinct = dict.fromkeys(tokens_)
        # words: tokens with a letter or digit; symbol-only tokens ("-", "|", "...") are not words
        symbolic = {w for w in distinct if not w.isalnum() and not _WORDISH.search(w)}
        n_tok = len(tokens_)
        n = n_tok - (sum(map(symbolic.__contains__, tokens_)) if symbolic else 0)
        if n < self.min_words or n == 0:  # (no word at all: every ratio below would divide by zero)
            return False, "gopher_too_few_words"
        if n > self.max_words:
            return False, "gopher_too_many_words"
        if not cjk:
            chars = sum(map(len, tokens_)) - (sum(len(w) for w in tokens_ if w in symbolic) if symbolic else 0)
            if not self.min_mean_word_length <= chars / n <= self.max_mean_word_length:
                return False, "gopher_mean_word_length"
        # "#" and ellipses are two rules, each against the word count (Gopher: "for either")
        if text.count("#") / n > self.max_symbol_word_ratio:
            return False, "gopher_symbol_ratio"
        if sum(map(text.count, ELLIPSES)) / n > self.max_symbol_word_ratio:
            return False, "gopher_symbol_ratio"
        lines = [ln.strip() for ln in text.split("\n")]  # every line, blank ones included (Gopher: "lines")
        if sum(map(methodcaller("startswith", BULLETS), lines)) / len(lines) > self.max_bullet_lines:
            return False, "gopher_bullet_lines"
        if sum(map(methodcaller("endswith", ELLIPSES), lines)) / len(lines) > self.max_ellipsis_lines:
            return False, "gopher_ellipsis_lines"
        # a token without any letter: only tokens that are not all letters need the regex, once each
        odd = {w for w in distinct if not w.isalpha() and not _ALPHA.search(w)}
        alpha = n_tok - (sum(map(odd.__contains__, tokens_)) if odd else 0)
        if alpha / n_tok < self.min_alpha_words:
            return False, "gopher_alpha_words"
        # at least `min_stop_words` DISTINCT stop words ("the the" is one); "The," counts as "the"
        if cjk:
            stops = len(_ZH_STOP.intersection(distinct))
        else:
            stops = len(_EN_STOP.intersection({(w if w.isalpha() else _EDGES.sub("", w)).lower() for w in distinct}))
        if stops < self.min_stop_words:
            return False, "gopher_stop_words"
        return True


def _token_hashes(words: list[str]) -> np.ndarray:
    """xxh3-64 of each token's UTF-8 bytes, hashed once per distinct word (a dict lookup per occurrence)."""
    import xxhash

    h = xxhash.xxh3_64_intdigest
    of = {w: h(w.encode("utf-8", "surrogatepass")) for w in dict.fromkeys(words)}
    return np.fromiter(map(of.__getitem__, words), dtype=np.uint64, count=len(words))


def _ngram_hashes(th: np.ndarray, n: int) -> np.ndarray:
    m = th.size - n + 1
    out = th[:m].copy()
    for k in range(1, n):
        out = out * np.uint64(0x100000001B3) + th[k : k + m]
    return out


def top_ngram_fraction(th: np.ndarray, lens: np.ndarray, n: int, total: int, sep: int = 0) -> float:
    """Characters in all occurrences of the most frequent n-gram / `total`; an n-gram's characters are
    its words' plus `sep` between each two (1 for spaced text: its span in normalised text)."""
    if th.size < n or total == 0:
        return 0.0
    g = _ngram_hashes(th, n)
    _, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] < 2:
        return 0.0
    first = int(np.flatnonzero(inv == top)[0])
    return float(counts[top] * (lens[first : first + n].sum() + sep * (n - 1))) / total


def dup_ngram_fraction(th: np.ndarray, lens: np.ndarray, n: int, total: int, sep: int = 0) -> float:
    """Characters covered by the repeated occurrences (not the first) of any n-gram, each character
    counted once however many occurrences overlap it (Gopher), / `total`. Words sit `sep` characters
    apart; this reference marks every covered character (the filter uses `_NgramLevels`)."""
    if th.size < n or total == 0:
        return 0.0
    g = _ngram_hashes(th, n)
    _, first_idx = np.unique(g, return_index=True)
    repeat = np.ones(g.size, dtype=bool)
    repeat[first_idx] = False
    if not repeat.any():
        return 0.0
    starts = np.flatnonzero(repeat)
    pos = np.concatenate([[0], np.cumsum(lens + sep)])  # where each word starts
    cover = np.zeros(int(pos[-1]) + 1, dtype=np.int64)
    np.add.at(cover, pos[starts], 1)
    np.add.at(cover, pos[starts + n] - sep, -1)  # the end of the occurrence's last word
    return float((np.cumsum(cover[:-1]) > 0).sum()) / total


class _NgramLevels:
    """`top_ngram_fraction` and `dup_ngram_fraction` for every n of one document, sharing the work.

    Level n's hashes are level n-1's times P plus one more token (the same values `_ngram_hashes`
    gives), and two equal n-grams start with equal (n-1)-grams, so only positions whose (n-1)-gram
    occurs twice or more can hold a repeated n-gram: after the first level, each level sorts those
    positions only (usually few, often none). Covered characters come from a prefix sum over the
    repeated starts, not a pass over the document. The results are the plain functions' (tie-breaks
    included: groups in hash order, first occurrences first), barring a 64-bit hash collision at one
    level but not at the one below."""

    def __init__(self, th: np.ndarray, lens: np.ndarray, total: int, sep: int = 0):
        self.th, self.lens, self.total, self.sep = th, lens, total, sep
        self.cum = np.concatenate([[0], np.cumsum(lens)])
        self.n = 0
        self.cand = np.zeros(0, dtype=np.int64)  # level n: positions whose n-gram hash may repeat, ascending
        self.g = np.zeros(0, dtype=np.uint64)  # and their hashes
        self.o = self.heads = self.cnt = self.cand

    def _level(self, n: int, cand: np.ndarray, g: np.ndarray) -> None:
        o = np.argsort(g, kind="stable")
        vs = g[o]
        start = np.empty(vs.size, dtype=bool)  # first of its group of equal hashes
        start[:1] = True
        np.not_equal(vs[1:], vs[:-1], out=start[1:])
        heads = np.flatnonzero(start)
        self.n, self.cand, self.g, self.o, self.heads = n, cand, g, o, heads
        self.cnt = np.diff(np.append(heads, vs.size))

    def _goto(self, n: int) -> None:
        if n == self.n:
            return
        if self.n == 0 or n < self.n:
            self._level(n, np.arange(self.th.size - n + 1, dtype=np.int64), _ngram_hashes(self.th, n))
        while self.n < n:
            if self.cand.size == 0:  # nothing repeats at this length: nothing longer repeats either
                self.n = n
                break
            k = self.n + 1
            multi = np.repeat(self.cnt >= 2, self.cnt)
            pos = self.o[multi]
            pos.sort()  # positions (indices into cand) of repeated hashes, in position order
            cand = self.cand[pos]
            keep = cand < self.th.size - k + 1
            cand, g = cand[keep], self.g[pos][keep]
            self._level(k, cand, g * np.uint64(0x100000001B3) + self.th[cand + k - 1])

    def top(self, n: int) -> float:
        if self.th.size < n or self.total == 0:
            return 0.0
        self._goto(n)
        if self.cnt.size == 0 or self.cnt.max() < 2:
            return 0.0
        t = int(np.argmax(self.cnt))
        first = int(self.cand[self.o[self.heads[t]]])
        return float(self.cnt[t] * (self.lens[first : first + n].sum() + self.sep * (n - 1))) / self.total

    def dup(self, n: int) -> float:
        if self.th.size < n or self.total == 0:
            return 0.0
        self._goto(n)
        firsts = np.zeros(self.o.size, dtype=bool)
        firsts[self.heads] = True
        rep = self.cand[self.o[~firsts]]
        if rep.size == 0:
            return 0.0
        rep.sort()
        lo = rep.copy()  # the words of [r, r + n) not already covered by the previous repeated start
        np.maximum(rep[1:], rep[:-1] + n, out=lo[1:])
        chars = int((self.cum[rep + n] - self.cum[lo]).sum())
        if self.sep:  # separators: one before each new word, but none before the first of a new span
            chars += self.sep * int((rep + n - lo).sum() - np.count_nonzero(lo == rep))
        return float(chars) / self.total


@dataclass
class GopherRepetition(Filter):
    """Gopher's repetition rules: duplicate lines/paragraphs and top/duplicated n-gram character fractions."""

    type: ClassVar[str] = "gopher_repetition"
    max_dup_line_fraction: float = 0.30
    max_dup_para_fraction: float = 0.30
    max_dup_line_char_fraction: float = 0.20
    max_dup_para_char_fraction: float = 0.20
    top_ngrams: dict[str, float] = field(default_factory=lambda: {"2": 0.20, "3": 0.18, "4": 0.16})
    dup_ngrams: dict[str, float] = field(
        default_factory=lambda: {"5": 0.15, "6": 0.14, "7": 0.13, "8": 0.12, "9": 0.11, "10": 0.10}
    )
    max_tokens: int = 1_000_000  # n-gram statistics over the first 1M tokens: a 50 MB record costs seconds

    @staticmethod
    def _dups(parts: list[str]) -> tuple[float, int]:
        """(share of the parts that repeat an earlier one, characters in those repeats)."""
        seen: set[str] = set()
        n_dup = chars_dup = 0
        for p in parts:
            if p in seen:
                n_dup += 1
                chars_dup += len(p)
            else:
                seen.add(p)
        return n_dup / max(len(parts), 1), chars_dup

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        size = max(len(text), 1)  # every fraction of characters is of the document's characters (Gopher)
        paras = [p.strip() for p in re.split(r"\n{2,}", text) if p.strip()]
        frac, chars = self._dups(paras)
        if frac > self.max_dup_para_fraction:
            return False, "repetition_paragraphs"
        if chars / size > self.max_dup_para_char_fraction:
            return False, "repetition_paragraph_chars"
        lines = [ln for ln in text.split("\n") if ln.strip()]
        frac, chars = self._dups(lines)
        if frac > self.max_dup_line_fraction:
            return False, "repetition_lines"
        if chars / size > self.max_dup_line_char_fraction:
            return False, "repetition_line_chars"
        cjk = _is_cjk(doc)
        words, sep = _words(text, cjk), 0 if cjk else 1  # spaced words: one separator apart
        if not words:
            return True
        cut = len(words) > self.max_tokens
        words = words[: self.max_tokens]
        th = _token_hashes(words)
        lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        if cut:  # the statistics are over the first max_tokens words: so is the denominator
            size = int(lens.sum()) + sep * (len(words) - 1)
        levels = _NgramLevels(th, lens, size, sep)
        for n, limit in self.top_ngrams.items():
            if levels.top(int(n)) > limit:
                return False, f"repetition_top_{n}gram"
        for n, limit in self.dup_ngrams.items():
            if levels.dup(int(n)) > limit:
                return False, f"repetition_dup_{n}gram"
        return True


_TERMINAL = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？", "」", "』")  # C4: . ! ? or an end quote
_ELLIPSIS_END = ("...", "…")  # C4's code drops lines that end in an ellipsis
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_SENTENCE = re.compile(r"[.!?]+(?:\s|$)|[。！？]+")


@dataclass
class C4Filter(Map):
    """C4's line rules: remove citation marks; keep lines that end in terminal punctuation (not an
    ellipsis) and have >= 3 words (>= 5 CJK characters); remove javascript/policy lines; drop documents with lorem ipsum, curly brackets
    (off by default: it drops code), or fewer than `min_sentences` sentences left."""

    type: ClassVar[str] = "c4"
    min_words_per_line: int = 3
    min_sentences: int = 5
    drop_curly_bracket: bool = False
    max_word_length: int = 1000

    def apply(self, doc: Document) -> Document | tuple[None, str]:
        low = doc.text.lower()
        if "lorem ipsum" in low:
            return None, "c4_lorem_ipsum"
        if self.drop_curly_bracket and "{" in doc.text:
            return None, "c4_curly_bracket"
        cjk = _is_cjk(doc)
        kept: list[str] = []
        removed = 0
        for line in doc.text.split("\n"):
            s = line.strip()
            if not s:
                if kept and kept[-1] != "":
                    kept.append("")
                continue
            if "[" in s:  # Wikipedia-style citation marks go, as in C4
                s = _CITATION.sub("", s).strip()
            ls = s.lower()
            words = tokens(s, cjk)
            if (
                not s.endswith(_TERMINAL)
                or s.endswith(_ELLIPSIS_END)
                or len(words) < (5 if cjk else self.min_words_per_line)
                or "javascript" in ls
                or any(p in ls for p in _POLICY)
                or max(map(len, words)) > self.max_word_length
            ):
                removed += 1
                continue
            kept.append(s)
        text = "\n".join(kept).strip()
        if len(_SENTENCE.findall(text)) < self.min_sentences:
            return None, "c4_too_few_sentences"
        if removed:
            doc.metadata["c4_lines_removed"] = removed
        doc.text = text
        return doc


@dataclass
class LengthFilter(Filter):
    """Bounds on UTF-8 size: long-text selection (>= 32 KB in the recipe) or a guard against giant records."""

    type: ClassVar[str] = "length"
    min_bytes: int = 0
    max_bytes: int = 0  # 0 = no limit

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        n = len(doc.text.encode("utf-8", "surrogatepass"))
        if n < self.min_bytes:
            return False, "too_short"
        if self.max_bytes and n > self.max_bytes:
            return False, "too_long"
        return True
