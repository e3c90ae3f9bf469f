"""The files of an `ilm rlhf run` directory: atomic JSON / JSONL writes, reads, and where round k lives."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str) -> Path:
    from ilm.data.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def round_dir(run_dir: str | Path, k: int) -> Path:
    return Path(run_dir) / f"round-{k:02d}"
