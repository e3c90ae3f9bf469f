"""Format steps: HTML to text (trafilatura, as InternLM2), Unicode/whitespace normalisation, language ID."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ilm.data.base import Context, Filter, Map
from ilm.data.document import Document

# C0/C1 controls except tab and newline, plus zero-width and bidi marks that only hide text
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u202a-\u202e\u2060\ufeff]")
# a run of whitespace other than newlines, except a lone plain space (most of them: replacing each
# with itself was most of this step's time)
_SPACES = re.compile(r"[^\S\n ][^\S\n]*| [^\S\n]+")
_BLANKS = re.compile(r"\n{3,}")


@dataclass
class HtmlToText(Map):
    """Extracts main text from documents whose metadata.format is 'html' (WARC responses); others pass."""

    type: ClassVar[str] = "html_to_text"
    favor_precision: bool = False
    include_tables: bool = True

    def apply(self, doc: Document) -> Document | tuple[None, str]:
        if doc.metadata.get("format") != "html":
            return doc
        import trafilatura

        try:
            text = trafilatura.extract(
                doc.text, include_comments=False, include_tables=self.include_tables,
                favor_precision=self.favor_precision, deduplicate=False,
            )
        except Exception:  # noqa: BLE001 - lxml raises many kinds on broken markup
            text = None
        if not text:
            return None, "html_no_text"
        doc.text = text
        doc.metadata["format"] = "text"
        return doc


def normalise_text(text: str, form: str = "NFC") -> str:
    """NFC, no control characters, spaces collapsed within lines, lines stripped, at most one blank line."""
    if not text.isascii():
        text = unicodedata.normalize(form, text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    # runs are single spaces now: stripping each line is dropping a space next to a newline
    if " \n" in text:
        text = text.replace(" \n", "\n")
    if "\n " in text:
        text = text.replace("\n ", "\n")
    if "\n\n\n" in text:
        text = _BLANKS.sub("\n\n", text)
    return text.strip()


@dataclass
class Normalize(Map):
    """Unicode NFC plus whitespace/control clean-up; documents left empty are dropped ('empty')."""

    type: ClassVar[str] = "normalize"
    form: str = "NFC"

    def apply(self, doc: Document) -> Document | tuple[None, str]:
        doc.text = normalise_text(doc.text, self.form)
        if not doc.text:
            return None, "empty"
        return doc


_IDENTIFIER: Any = None


def _identifier() -> Any:
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def detect_language(text: str, max_chars: int = 4000) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from py3langid's bundled model, on the first max_chars characters."""
    lang, prob = _identifier().classify(text[:max_chars])
    return str(lang), float(prob)


_TABLES: dict[int, tuple[np.ndarray, ...]] = {}


def _tables(ident: Any) -> tuple[np.ndarray, ...]:
    """py3langid's byte DFA as arrays (next-state table, row offsets, feature of each state or -1) and
    its feature x language table widened once to float32, which is what its float32 @ float16 product
    computes in anyway (the same products, bit for bit; the test pins it)."""
    key = id(ident)
    if key not in _TABLES:
        _TABLES[key] = (np.frombuffer(ident.tk_nextmove, dtype=np.uint32), np.asarray(ident._rowbase, dtype=np.int64),
                        np.asarray(ident.tk_output, dtype=np.int32), ident.nb_ptc.astype(np.float32))
    return _TABLES[key]


def _visits_batch(ident: Any, encoded: list[bytes], max_cells: int = 1 << 23) -> list[Counter | None]:
    """py3langid's `visit_counts` for many documents at once: the DFA advances every document by one
    byte per numpy step (documents sorted by length, so the live ones are a prefix), then each document's
    features, in the order they fire, are counted by `Counter` exactly as py3langid does; the dict
    (its insertion order included) is the same, so the scores computed from it are bit-identical.
    Documents go in groups of at most `max_cells` (documents x longest length) bytes of work arrays."""
    lens = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    order = np.argsort(-lens, kind="stable")
    res: list[Counter | None] = [None] * len(encoded)
    k0 = 0
    while k0 < order.size and lens[order[k0]] > 0:
        k1 = k0 + max(1, max_cells // int(lens[order[k0]]))
        group = order[k0:k1]
        for j, c in zip(group.tolist(), _walk(ident, [encoded[j] for j in group.tolist()], lens[group])):
            res[j] = c
        k0 = k1
    return res


def _walk(ident: Any, encoded: list[bytes], ln: np.ndarray) -> list[Counter | None]:
    """The DFA walk over documents sorted by decreasing length `ln` (all > 0)."""
    nm, rowbase, out, _ = _tables(ident)
    n, width = len(encoded), int(ln[0])
    flat = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    cols = np.arange(flat.size) - np.repeat(np.cumsum(ln) - ln, ln)
    grid = np.zeros((width, n), dtype=np.uint8)  # grid[t, k]: byte t of the k-th document
    grid[cols, np.repeat(np.arange(n), ln)] = flat
    live = np.searchsorted(-ln, -np.arange(width), side="left")  # documents longer than t
    state = np.zeros(n, dtype=np.int64)
    feats = np.full((width, n), -1, dtype=np.int32)
    for t in range(width):
        s = state[: live[t]]
        np.add(rowbase[s], grid[t, : s.size], out=s)
        s[:] = nm[s]
        feats[t, : s.size] = out[s]
    feats = np.ascontiguousarray(feats.T)
    res: list[Counter | None] = []
    for k in range(n):
        f = feats[k, : ln[k]]
        f = f[f >= 0]
        res.append(Counter(f.tolist()) if f.size else None)
    return res


def detect_languages(texts: list[str], max_chars: int = 4000) -> list[tuple[str, float]]:
    """`detect_language` of many texts at once (same results, bit for bit): the byte-by-byte DFA walk,
    py3langid's costliest part in pure Python, runs as numpy steps over the whole batch; the scoring is
    py3langid's own."""
    ident = _identifier()
    if not _mirrored():  # another py3langid: its scoring may differ from the steps mirrored below
        return [detect_language(t, max_chars) for t in texts]
    encoded = [ident._encode(t[:max_chars]) for t in texts]
    table = _tables(ident)[3]
    out = []
    for enc, visits in zip(encoded, _visits_batch(ident, encoded)):
        if visits:  # py3langid's `_sparse_score`
            idx = np.fromiter(visits.keys(), dtype=np.intp, count=len(visits))
            counts = np.fromiter(visits.values(), dtype=np.float32, count=len(visits))
            scores = np.log1p(counts) @ table[idx] + ident.nb_pc
        else:
            scores = np.full(len(ident.nb_classes), 0.0, dtype=np.float32)
        # the rest of py3langid 0.4's `_decide` and `classify` with norm_probs, step for step
        scores *= 1.0 / math.sqrt(len(enc) or 1)
        np.exp(scores - scores.max(), out=scores)
        scores /= scores.sum()
        for i, j in ident._alias_pairs:
            scores[i] += scores[j]
            scores[j] = 0.0
        i = int(scores.argmax())
        conf = float(scores[i])
        lang = "und" if ident.min_confidence is not None and conf < ident.min_confidence else ident.nb_classes[i]
        out.append((str(lang), conf))
    return out


def _mirrored() -> bool:
    from importlib.metadata import version

    return version("py3langid") == "0.4.0" and bool(_identifier()._norm_probs)


@dataclass
class LanguageFilter(Filter):
    """Keeps documents in `languages` with probability >= min_score; writes metadata.language/_score.

    Documents are identified up to 4,096 at a time (`detect_languages`); verdicts, and the order of
    the documents it yields and drops, are those of the one-by-one filter. (The steps before it see a
    batch ahead, so their drops reach the removed shard earlier: the same records, another order.)"""

    type: ClassVar[str] = "language"
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    min_score: float = 0.65
    max_chars: int = 2000  # py3langid is the costliest rule step; 2,000 characters decide the language

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self._verdict(doc, *detect_language(doc.text, self.max_chars))

    def _verdict(self, doc: Document, lang: str, score: float) -> bool | tuple[bool, str]:
        doc.metadata["language"], doc.metadata["language_score"] = lang, round(score, 4)
        if self.languages and lang not in self.languages:
            return False, "language_other"
        if score < self.min_score:
            return False, "language_low_confidence"
        return True

    def run(self, docs: Iterator[Document], ctx: Context) -> Iterator[Document]:
        batch: list[Document] = []
        size = 0
        for doc in docs:
            batch.append(doc)
            size += min(len(doc.text), self.max_chars)
            if len(batch) >= _BATCH_DOCS or size >= _BATCH_CHARS:
                yield from self._flush(batch, ctx)
                batch, size = [], 0
        yield from self._flush(batch, ctx)

    def _flush(self, batch: list[Document], ctx: Context) -> Iterator[Document]:
        for doc, (lang, score) in zip(batch, detect_languages([d.text for d in batch], self.max_chars)):
            verdict = self._verdict(doc, lang, score)
            if verdict is True:
                yield doc
            else:
                ctx.drop(doc, verdict[1])


_BATCH_DOCS, _BATCH_CHARS = 4096, 1 << 23
