"""Indentation-blind file-level near-dedup: a code tokenizer in front of the general MinHash step.

The general step shingles word 5-grams and ignores punctuation; for code that would both miss operators
and see indentation only as noise. `code_tokens` instead turns a file into tokens that (1) keep
identifiers, numbers and every punctuation character (as word-like `pXX` tokens, so the shared
shingler hashes them), and (2) replace leading whitespace by INDENT/DEDENT tokens computed with an
indentation stack, as Python's own tokenizer does. A stack depends only on the *order* of indentation
widths, so 2 spaces, 4 spaces and tabs (any consistent re-indentation) give the same token stream and
therefore the same MinHash signature. Everything after the tokenizer (signatures, bands, union-find,
most-recent survivor, the decision files) is `ilm.data.dedup.MinHashDedup` unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ilm.data.dedup import MinHashDedup
from ilm.data.document import Document

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d[\w.]*|[^\sA-Za-z0-9_]")
INDENT, DEDENT = "ind_", "ded_"
TAB_WIDTH = 8


def indent_width(line: str) -> int:
    """Columns of leading whitespace (a tab advances to the next multiple of TAB_WIDTH)."""
    col = 0
    for ch in line:
        if ch == " ":
            col += 1
        elif ch == "\t":
            col = (col // TAB_WIDTH + 1) * TAB_WIDTH
        else:
            break
    return col


def code_tokens(code: str) -> list[str]:
    """Tokens of a code file, blind to the indentation unit (see module docstring)."""
    out: list[str] = []
    stack = [0]
    for line in code.splitlines():
        body = line.strip()
        if not body:
            continue
        w = indent_width(line)
        if w > stack[-1]:
            stack.append(w)
            out.append(INDENT)
        else:
            while w < stack[-1]:
                stack.pop()
                out.append(DEDENT)
            if w > stack[-1]:  # dedent to a width never seen: treat as a new level
                stack.append(w)
                out.append(INDENT)
        for tok in _TOKEN.findall(body):
            out.append(tok if tok[0].isalnum() or tok[0] == "_" or not tok.isascii() else f"p{ord(tok):02x}")
    return out


def code_shingle_text(code: str) -> str:
    """What the MinHash shingler sees for a code file: its tokens joined by spaces."""
    return " ".join(code_tokens(code))


class _CodeCollector:
    """Wraps the general step's collector: it hashes the code tokens instead of the raw text."""

    def __init__(self, inner: Any):
        self.inner = inner

    def add(self, doc: Document) -> None:
        self.inner.add(Document(doc.id, code_shingle_text(doc.text), doc.source, doc.timestamp))

    def close(self) -> None:
        self.inner.close()


@dataclass
class CodeMinHashDedup(MinHashDedup):
    """File-level MinHash near-dedup over indentation-blind code tokens; same parameters as the general
    step (5-grams, 128 hashes, Jaccard 0.7, 14 x 9 bands); the most recent file of a cluster survives."""

    type: ClassVar[str] = "code_minhash_dedup"
    reason: ClassVar[str] = "near_duplicate_code"

    def collector(self, work_dir: Path, shard: int) -> _CodeCollector:
        return _CodeCollector(super().collector(work_dir, shard))
