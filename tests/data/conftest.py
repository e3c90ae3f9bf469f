"""Shared helpers for data tests: real text from Python's own docs, shard writers, the balance check."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ilm.data.document import Document
from ilm.data.io import read_all, write_documents


@pytest.fixture(scope="session")
def real_texts() -> list[str]:
    from ilm.data.corpus import real_texts as rt

    return rt(min_words=60, max_docs=1400)


def write_shards(folder: Path, docs: list[Document], n: int, ext: str = "jsonl.zst") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"in-{i:03d}.{ext}"
        write_documents(p, docs[i::n])
        paths.append(p)
    return paths


def assert_balanced(out: Path, input_ids: list[str] | None = None) -> tuple[list[Document], list[Document]]:
    """kept + removed = input: every input id appears exactly once across kept and removed outputs,
    every removed document names its step and reason, and the ledger agrees."""
    kept, removed = read_all(out / "kept"), (read_all(out / "removed") if (out / "removed").exists() else [])
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["input_docs"] == len(kept) + len(removed)
    assert ledger["kept_docs"] == len(kept) and ledger["removed_docs"] == len(removed)
    assert ledger["balanced"] is True
    assert sum(r["removed_docs"] for r in ledger["funnel"]) == len(removed)
    for d in removed:
        assert d.metadata["removed"]["step"] and d.metadata["removed"]["reason"]
    if input_ids is not None:
        seen = Counter(d.id for d in kept) + Counter(d.id for d in removed)
        assert seen == Counter(input_ids), "documents lost or doubled"
    return kept, removed
