"""Token shards: pipeline output (jsonl / parquet documents) tokenized into flat uint32 files plus an index.

One source directory holds, per input file `i`:
    part-0000i.tokens      uint32 token ids of every document, back to back (each: <s> text </s>)
    part-0000i.index.npy   int64 offsets, one more than the documents (document j = tokens[o[j]:o[j+1]])
    part-0000i.epochs.npy  float32 epoch multiplier per document (code tiers: high > 1, medium 1, low 0)
and `meta.json` (tokenizer fingerprint, counts). A part is written to temporary names and renamed, its
index last, so an existing index means a finished part: a rerun skips finished parts and redoes the rest.
Files are tokenized in parallel processes; each process uses the tokenizer's own batch encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOKEN_DTYPE = np.uint32
TIER_EPOCHS = {"high": 3.0, "medium": 1.0, "low": 0.0}


class ShardError(ValueError):
    """A token shard that is missing, empty or inconsistent."""


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    path = Path(tokenizer_dir)
    files = sorted(p for p in path.iterdir() if p.name in ("tokenizer.json", "tokenizer.model"))
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.read_bytes())
    return digest.hexdigest()[:16]


def _epochs_of(metadata: dict) -> float:
    if "epochs" in metadata:
        return float(metadata["epochs"])
    tier = metadata.get("tier")
    return TIER_EPOCHS.get(tier, 1.0) if tier is not None else 1.0


class PartWriter:
    """Writes one part: tokens streamed to a temporary file, then renamed; the index is renamed last."""

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        self._tmp = self.prefix.with_name(self.prefix.name + ".tokens.tmp")
        self._f = open(self._tmp, "wb")  # noqa: SIM115 - closed in close(), after the last add()
        self.offsets, self.epochs = [0], []

    def add(self, ids: np.ndarray | list[int], epochs: float = 1.0) -> None:
        arr = np.asarray(ids, dtype=TOKEN_DTYPE)
        self._f.write(arr.tobytes())
        self.offsets.append(self.offsets[-1] + len(arr))
        self.epochs.append(epochs)

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.prefix.with_name(self.prefix.name + ".tokens"))
        np.save(self.prefix.with_name(self.prefix.name + ".epochs.npy"), np.asarray(self.epochs, dtype=np.float32))
        tmp_index = self.prefix.with_name(self.prefix.name + ".index.tmp.npy")
        np.save(tmp_index, np.asarray(self.offsets, dtype=np.int64))
        os.replace(tmp_index, self.prefix.with_name(self.prefix.name + ".index.npy"))  # the completion marker


def write_token_shards(out_dir: str | Path, docs: list, epochs: list[float] | None = None) -> TokenShards:
    """Already-tokenized documents into a one-part shard directory (benchmarks, tests, other tokenizers)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = PartWriter(out / "part-00000")
    for i, doc in enumerate(docs):
        writer.add(doc, epochs[i] if epochs else 1.0)
    writer.close()
    n = int(writer.offsets[-1])
    (out / "meta.json").write_text(json.dumps({"tokenizer": None, "documents": len(docs), "tokens": n}) + "\n")
    return TokenShards(out)


def _tokenize_part(args: tuple[str, str, str, int]) -> dict:
    src, tokenizer_dir, out_prefix, batch_docs = args
    from ilm.data.io import read_documents
    from ilm.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    writer = PartWriter(out_prefix)
    batch: list = []
    skipped = 0

    def flush() -> None:
        for doc, ids in zip(batch, tok.encode_batch([d.text for d in batch], bos=True)):
            writer.add(ids + [tok.eos_id], _epochs_of(doc.metadata))
        batch.clear()

    for doc in read_documents(src):
        if not doc.text:
            skipped += 1
            continue
        batch.append(doc)
        if len(batch) >= batch_docs:
            flush()
    flush()
    writer.close()
    return {"source": src, "documents": len(writer.offsets) - 1, "tokens": writer.offsets[-1], "skipped_empty": skipped}


def tokenize_to_shards(
    inputs: list[str | Path], tokenizer_dir: str | Path, out_dir: str | Path, workers: int = 2, batch_docs: int = 256
) -> dict:
    """Tokenize document files into a shard directory (one part per input file); resumable."""
    from ilm.data.io import list_inputs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = list_inputs([Path(p) for p in inputs])
    if not files:
        raise ShardError(f"no input files found in {[str(p) for p in inputs]}")
    fingerprint = tokenizer_fingerprint(tokenizer_dir)
    meta_path = out / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old.get("tokenizer") != fingerprint:
            raise ShardError(
                f"{out} was tokenized with tokenizer {old.get('tokenizer')}, not {fingerprint} ({tokenizer_dir}); "
                "use a fresh output directory"
            )
    jobs = []
    for i, src in enumerate(files):
        prefix = out / f"part-{i:05d}"
        if not prefix.with_name(prefix.name + ".index.npy").exists():
            jobs.append((str(src), str(tokenizer_dir), str(prefix), batch_docs))
    reports = []
    if jobs:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                reports = list(pool.map(_tokenize_part, jobs))
        else:
            reports = [_tokenize_part(j) for j in jobs]
    shards = TokenShards(out, check_meta=False)
    meta = {
        "tokenizer": fingerprint, "tokenizer_dir": str(tokenizer_dir), "inputs": [str(f) for f in files],
        "parts": len(files), "documents": shards.num_docs, "tokens": int(shards.num_tokens),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return {**meta, "tokenized_now": len(jobs), "reports": reports}


@dataclass
class _Part:
    tokens: np.ndarray
    offsets: np.ndarray
    epochs: np.ndarray


class TokenShards:
    """Read-only view over a shard directory: documents as uint32 arrays, memory-mapped."""

    def __init__(self, path: str | Path, check_meta: bool = True):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ShardError(f"{self.path}: not a token shard directory (run `ilm pretrain tokenize` first)")
        if check_meta and not (self.path / "meta.json").exists():
            raise ShardError(f"{self.path}: no meta.json; tokenization did not finish (rerun it to resume)")
        self.parts = [self._open(p) for p in sorted(self.path.glob("part-*.index.npy"))]
        if not self.parts:
            raise ShardError(f"{self.path}: no finished parts (part-*.index.npy)")
        self.doc_lengths = np.concatenate([np.diff(p.offsets) for p in self.parts])
        self.epochs = np.concatenate([p.epochs for p in self.parts])
        self._starts = np.cumsum([0] + [len(p.offsets) - 1 for p in self.parts])
        if self.num_docs == 0:
            raise ShardError(f"{self.path}: the shards hold no documents")

    @staticmethod
    def _open(index_path: Path) -> _Part:
        stem = index_path.name.removesuffix(".index.npy")
        tok_path = index_path.with_name(stem + ".tokens")
        try:
            offsets = np.load(index_path)
            epochs = np.load(index_path.with_name(stem + ".epochs.npy"))
        except (OSError, ValueError) as err:
            raise ShardError(f"{index_path}: unreadable shard index ({err})") from None
        if not tok_path.exists():
            raise ShardError(f"{tok_path}: missing (its index exists; delete {index_path} to redo this part)")
        size = tok_path.stat().st_size
        if size % 4 or offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] * 4 != size:
            raise ShardError(
                f"{tok_path}: corrupt shard ({size} bytes, index says {int(offsets[-1]) * 4 if len(offsets) else '?'}); "
                f"delete {index_path} and rerun tokenization"
            )
        if np.any(np.diff(offsets) < 0) or len(epochs) != len(offsets) - 1:
            raise ShardError(f"{index_path}: corrupt shard index")
        tokens = np.memmap(tok_path, dtype=TOKEN_DTYPE, mode="r") if size else np.zeros(0, TOKEN_DTYPE)
        return _Part(tokens, offsets, epochs)

    @property
    def num_docs(self) -> int:
        return len(self.doc_lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.doc_lengths.sum())

    def doc(self, i: int) -> np.ndarray:
        part = int(np.searchsorted(self._starts, i, side="right") - 1)
        j = i - int(self._starts[part])
        p = self.parts[part]
        return p.tokens[p.offsets[j] : p.offsets[j + 1]]

    def max_token_id(self) -> int:
        return int(max(int(p.tokens.max()) if len(p.tokens) else 0 for p in self.parts))
