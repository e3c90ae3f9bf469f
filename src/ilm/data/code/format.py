"""Format cleaning: every code file to one markdown form, and back.

A file becomes

    ## path/to/file.py
    <blank line>
    ```python
    <the code, LF line endings, no trailing spaces, one final newline>
    ```

The fence is one backtick longer than the longest backtick run inside the code, so any file renders
unambiguously and `parse_markdown` recovers path, tag and code exactly (samples in path-comment form are
rebuilt from it). `CodeInput` is the pipeline's first step: it drops the skip records the repository
reader wrote, with their reason, and normalises what remains.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from ilm.data.base import Context, Map, Step
from ilm.data.code.languages import fence_tag
from ilm.data.document import Document

_BACKTICKS = re.compile(r"`{3,}")
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)


def normalise_code(text: str) -> str:
    """LF line endings, no BOM, no trailing whitespace, exactly one final newline."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING.sub("", text)
    return text.strip("\n") + "\n"


def fence_for(code: str) -> str:
    longest = max((len(m) for m in _BACKTICKS.findall(code)), default=2)
    return "`" * max(3, longest + 1)


def to_markdown(path: str, language: str, code: str) -> str:
    """The unified markdown block of one file (code must be normalised)."""
    fence = fence_for(code)
    return f"## {path}\n\n{fence}{fence_tag(language)}\n{code}{fence}\n"


def parse_markdown(block: str) -> tuple[str, str, str]:
    """(path, fence tag, code) of a block written by `to_markdown`."""
    head, rest = block.split("\n", 1)
    if not head.startswith("## ") or not rest.startswith("\n"):
        raise ValueError("not a code markdown block")
    fence_line, body = rest[1:].split("\n", 1)
    n = len(fence_line) - len(fence_line.lstrip("`"))
    fence = fence_line[:n]
    if n < 3 or not body.endswith(fence + "\n"):
        raise ValueError("unterminated code fence")
    return head[3:], fence_line[n:], body[: -len(fence) - 1]


@dataclass
class CodeInput(Step):
    """First code step: skip records leave with their reason; every other file is normalised."""

    type: ClassVar[str] = "code_input"
    languages: list[str] | None = None  # keep only these languages (None = all detected)

    def run(self, docs: Iterator[Document], ctx: Context) -> Iterator[Document]:
        for doc in docs:
            reason = doc.metadata.get("skip")
            if reason:
                ctx.drop(doc, str(reason))
                continue
            if self.languages is not None and doc.metadata.get("language") not in self.languages:
                ctx.drop(doc, "language_not_selected")
                continue
            doc.text = normalise_code(doc.text)
            yield doc


@dataclass
class CodeMarkdown(Map):
    """Last code step: the file's text becomes its markdown block (path heading + fenced code)."""

    type: ClassVar[str] = "code_markdown"

    def apply(self, doc: Document) -> Document:
        m = doc.metadata
        doc.text = to_markdown(m.get("path", doc.id), m.get("language", ""), doc.text)
        m["format"] = "markdown"
        return doc
