"""The step contract: a step turns an iterator of documents into an iterator of documents.

A plain Step may change documents and must hand every document it does not yield to `ctx.drop` with a
reason (the executor checks this: in = out + dropped per shard, or the shard fails). A Filter only says
keep (True) or drop ((False, reason)). A GlobalStep (dedup) needs the whole corpus: the executor runs its
`collect` over every shard, then one `reduce`, then its `run` in the next pass; steps never see shards,
markers or the ledger.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ilm.data.document import Document


class Context(Protocol):
    """What the executor gives a step: where it is, and where dropped documents go."""

    shard: int
    work_dir: Path

    def drop(self, doc: Document, reason: str, **detail: Any) -> None: ...

    def count(self, key: str, n: int = 1) -> None: ...


@dataclass
class Step:
    """Base of every step; `type` is the name used in recipe TOML files."""

    type: ClassVar[str] = "step"
    name: str = ""

    def label(self) -> str:
        return self.name or self.type

    def run(self, docs: Iterator[Document], ctx: Context) -> Iterator[Document]:
        raise NotImplementedError


@dataclass
class Map(Step):
    """A step that rewrites each document (normalisation, HTML extraction); may still drop via `apply`."""

    type: ClassVar[str] = "map"

    def apply(self, doc: Document) -> Document | tuple[None, str]:
        raise NotImplementedError

    def run(self, docs: Iterator[Document], ctx: Context) -> Iterator[Document]:
        for doc in docs:
            out = self.apply(doc)
            if isinstance(out, tuple):
                ctx.drop(doc, out[1])
            else:
                yield out


@dataclass
class Filter(Step):
    """A step that keeps a document or drops it with a reason; it may annotate metadata, never text."""

    type: ClassVar[str] = "filter"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        raise NotImplementedError

    def run(self, docs: Iterator[Document], ctx: Context) -> Iterator[Document]:
        for doc in docs:
            verdict = self.filter(doc)
            if verdict is True:
                yield doc
            elif verdict is False:
                ctx.drop(doc, self.type)
            else:
                keep, reason = verdict
                if keep:
                    yield doc
                else:
                    ctx.drop(doc, reason)


class Collector(Protocol):
    def add(self, doc: Document) -> None: ...

    def close(self) -> None: ...


@dataclass
class GlobalStep(Step):
    """A step that must see every shard before deciding (dedup): collect -> reduce -> run."""

    type: ClassVar[str] = "global"

    def collector(self, work_dir: Path, shard: int) -> Collector:
        raise NotImplementedError

    def reduce(self, work_dir: Path, n_shards: int) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class Throttle(Step):
    """Sleeps per document: only for demonstrating and testing kill/resume on small inputs."""

    type: ClassVar[str] = "throttle"
    seconds_per_doc: float = 0.0

    def run(self, docs: Iterator[Document], ctx: Context) -> Iterator[Document]:
        import time

        for doc in docs:
            if self.seconds_per_doc:
                time.sleep(self.seconds_per_doc)
            yield doc


# --- text helpers shared by filters and dedup -------------------------------------------------------

CJK_RE = re.compile(
    "[\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\u0e00-\u0e7f\u0e80-\u0eff\u1000-\u109f\u1780-\u17ff]"
)
WORD_RE = re.compile(r"\w+", re.UNICODE)
_SPACE_RE = re.compile(r"\s")


def cjk_fraction(text: str, sample: int = 4000) -> float:
    """Share of scripts written without spaces (Han, kana, Hangul, Thai, Lao, Burmese, Khmer) in a sample."""
    if text.isascii():
        return 0.0
    s = text[:sample]
    n_cjk = len(CJK_RE.findall(s))
    if n_cjk == 0:
        return 0.0
    return n_cjk / max(len(s) - len(_SPACE_RE.findall(s)), 1)


def tokens(text: str, cjk: bool | None = None) -> list[str]:
    """Words for spaced scripts; for Chinese-like text each CJK character is a token, Latin runs are words."""
    if cjk is None:
        cjk = cjk_fraction(text) >= 0.3
    if not cjk:
        return text.split()
    return re.findall(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\s\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]+", text)
