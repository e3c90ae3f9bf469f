"""Shared tokenizer builds: the released 92,544 layout and a small one, each built once per test run.

pytest-xdist workers share one directory above their own base temp; a file lock makes the first
worker build and the others load (`build_tokenizer` reuses a directory holding the same build).
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from ilm.tokenizer import build_tokenizer

DATA = Path(__file__).parent / "data"


def _shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    root = tmp_path_factory.getbasetemp()
    if root.name.startswith("popen-gw"):  # an xdist worker: share with the other workers
        root = root.parent
    return root / name


def _locked_build(tmp_path_factory: pytest.TempPathFactory, name: str, **kwargs):
    out = _shared_dir(tmp_path_factory, name)
    lock = out.with_suffix(".lock")
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            return build_tokenizer(out, **kwargs)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def full_tok(tmp_path_factory):
    """The default build: cl100k top 60,004 + 32,390 Chinese tokens from jieba + 147 spare = 92,544."""
    return _locked_build(tmp_path_factory, "tok_full")


@pytest.fixture(scope="session")
def small_tok(tmp_path_factory):
    """A scaled-down build (1,024 tokens), Chinese learned from the raw-text sample in tests/tokenizer/data."""
    return _locked_build(tmp_path_factory, "tok_1024", vocab_size=1024, chinese=[DATA / "zh_prose.txt"])


@pytest.fixture(scope="session")
def en_text() -> str:
    return (DATA / "en_prose.txt").read_text()


@pytest.fixture(scope="session")
def zh_text() -> str:
    return (DATA / "zh_prose.txt").read_text()


@pytest.fixture(scope="session")
def code_text() -> str:
    """Python source that ships with the interpreter (a fixed set of stdlib modules)."""
    import argparse
    import dataclasses
    import json.decoder
    import textwrap

    return "\n".join(Path(m.__file__).read_text() for m in (argparse, dataclasses, json.decoder, textwrap))
