"""Helpers for code-pipeline tests: installed packages as real repositories, small repositories on disk."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def installed(name: str) -> Path:
    p = site_packages() / name
    if not p.is_dir():
        pytest.skip(f"{name} is not installed")
    return p


def make_repo(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    return root


def python_files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}
