"""Token shards: pipeline output (jsonl / parquet documents) tokenized into flat uint32 files plus an index.

One source directory holds, per input file `i`:
    part-0000i.tokens      uint32 token ids of every document, back to back (each: <s> text </s>)
    part-0000i.index.npy   int64 offsets, one more than the documents (document j = tokens[o[j]:o[j+1]])
    part-0000i.epochs.npy  float32 epoch multiplier per document (code tiers: high > 1, medium 1, low 0)
    part-0000i.meta.json   documents, tokens, largest token id (computed while writing)
    part-0000i.counts.npy  int64 histogram of token ids (the unigram distribution)
and `meta.json` (tokenizer fingerprint, counts). A part is written to temporary names and renamed, its
index last, so an existing index means a finished part: a rerun skips finished parts and redoes the rest.
Files are tokenized in parallel processes; each process uses the tokenizer's own batch encoder.

Training start-up reads only indexes and the per-part metadata, never the token arrays: at the recipe's
scale those are terabytes, read by every rank at every start. A part written before the metadata existed
is scanned once, with a warning, and its metadata written beside it (a rerun of `ilm pretrain tokenize`
does the same), so the scan never repeats.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOKEN_DTYPE = np.uint32
TIER_EPOCHS = {"high": 3.0, "medium": 1.0, "low": 0.0}
_COUNT_CHUNK = 1 << 22  # tokens per histogram update (bounded memory while writing or scanning)
_MAX_TOKEN_ID = 1 << 24  # far above any tokenizer's vocabulary: an id beyond it means corrupt tokens


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


def _suffixed(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


class _Histogram:
    """Token-id counts accumulated in chunks (one bincount per few million tokens, not per document)."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._n = 0

    def add(self, ids: np.ndarray) -> None:
        if len(ids):
            self._pending.append(ids)
            self._n += len(ids)
        if self._n >= _COUNT_CHUNK:
            self.flush()

    def flush(self) -> np.ndarray:
        if self._pending:
            ids = np.concatenate(self._pending)
            if int(ids.max()) >= _MAX_TOKEN_ID:
                raise ShardError(f"token id {int(ids.max())} is beyond any vocabulary: corrupt tokens")
            bins = np.bincount(ids)
            if len(bins) > len(self.counts):
                self.counts = np.concatenate([self.counts, np.zeros(len(bins) - len(self.counts), np.int64)])
            self.counts[: len(bins)] += bins
            self._pending, self._n = [], 0
        return self.counts


def _write_part_meta(prefix: Path, documents: int, counts: np.ndarray) -> dict:
    """`<part>.counts.npy` then `<part>.meta.json`, each via a temporary name (safe for concurrent writers)."""
    nonzero = np.flatnonzero(counts)
    meta = {"documents": int(documents), "tokens": int(counts.sum()),
            "max_token_id": int(nonzero[-1]) if len(nonzero) else -1, "counts": prefix.name + ".counts.npy"}
    tmp = _suffixed(prefix, f".counts.tmp-{os.getpid()}.npy")
    np.save(tmp, counts[: meta["max_token_id"] + 1])
    os.replace(tmp, _suffixed(prefix, ".counts.npy"))
    tmp = _suffixed(prefix, f".meta.tmp-{os.getpid()}.json")
    tmp.write_text(json.dumps(meta) + "\n")
    os.replace(tmp, _suffixed(prefix, ".meta.json"))
    return meta


class PartWriter:
    """Writes one part: tokens streamed to a temporary file, then renamed; metadata next; the index last."""

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        self._tmp = _suffixed(self.prefix, ".tokens.tmp")
        self._f = open(self._tmp, "wb")  # noqa: SIM115 - closed in close(), after the last add()
        self.offsets, self.epochs = [0], []
        self._hist = _Histogram()

    def add(self, ids: np.ndarray | list[int], epochs: float = 1.0) -> None:
        arr = np.asarray(ids, dtype=TOKEN_DTYPE)
        self._f.write(arr.tobytes())
        self._hist.add(arr)
        self.offsets.append(self.offsets[-1] + len(arr))
        self.epochs.append(epochs)

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, _suffixed(self.prefix, ".tokens"))
        np.save(_suffixed(self.prefix, ".epochs.npy"), np.asarray(self.epochs, dtype=np.float32))
        _write_part_meta(self.prefix, len(self.offsets) - 1, self._hist.flush())
        tmp_index = _suffixed(self.prefix, ".index.tmp.npy")
        np.save(tmp_index, np.asarray(self.offsets, dtype=np.int64))
        os.replace(tmp_index, _suffixed(self.prefix, ".index.npy"))  # the completion marker


def scan_part_meta(prefix: str | Path) -> dict:
    """Metadata of a finished part written without it: one pass over its tokens, then written beside it."""
    prefix = Path(prefix)
    offsets = np.load(_suffixed(prefix, ".index.npy"), mmap_mode="r")
    size = _suffixed(prefix, ".tokens").stat().st_size
    tokens = np.memmap(_suffixed(prefix, ".tokens"), dtype=TOKEN_DTYPE, mode="r") if size else np.zeros(0, TOKEN_DTYPE)
    hist = _Histogram()
    for start in range(0, len(tokens), _COUNT_CHUNK):
        hist.add(np.asarray(tokens[start : start + _COUNT_CHUNK]))
    counts = hist.flush()
    try:
        return _write_part_meta(prefix, len(offsets) - 1, counts)
    except OSError as err:  # a read-only corpus: use the numbers, the scan repeats next time
        print(f"warning: could not write metadata beside {prefix} ({err}); it will be scanned again", file=sys.stderr)
        nonzero = np.flatnonzero(counts)
        return {"documents": len(offsets) - 1, "tokens": int(counts.sum()),
                "max_token_id": int(nonzero[-1]) if len(nonzero) else -1, "counts": None, "_counts": counts}


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
        if not _suffixed(prefix, ".index.npy").exists():
            jobs.append((str(src), str(tokenizer_dir), str(prefix), batch_docs))
        elif not _suffixed(prefix, ".meta.json").exists():  # finished by an ilm without part metadata
            scan_part_meta(prefix)
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
        "max_token_id": shards.max_token_id(),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return {**meta, "tokenized_now": len(jobs), "reports": reports}


@dataclass
class _Part:
    prefix: Path
    tokens: np.ndarray  # memory-mapped: nothing is read until a document is taken
    offsets: np.ndarray
    epochs: np.ndarray
    meta: dict | None  # <part>.meta.json, None for a part written before part metadata existed


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
        prefix = index_path.with_name(stem)
        meta_path = _suffixed(prefix, ".meta.json")
        meta = None
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                stale = meta["documents"] != len(offsets) - 1 or meta["tokens"] != int(offsets[-1])
            except (ValueError, KeyError, TypeError) as err:
                raise ShardError(f"{meta_path}: unreadable part metadata ({err}); delete it to rebuild it") from None
            if stale:
                raise ShardError(
                    f"{meta_path}: says {meta['documents']} documents / {meta['tokens']} tokens, the index "
                    f"{len(offsets) - 1} / {int(offsets[-1])}; delete it to rebuild it (one scan of the part)"
                )
        return _Part(prefix, tokens, offsets, epochs, meta)

    def _meta(self, part: _Part) -> dict:
        if part.meta is None:
            print(f"warning: {part.prefix}: no part metadata (tokenized by an older ilm); scanning its tokens "
                  "once and writing it beside the part", file=sys.stderr)
            part.meta = scan_part_meta(part.prefix)
        return part.meta

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
        """Largest token id in the corpus, from the part metadata (no token is read)."""
        return max(int(self._meta(p)["max_token_id"]) for p in self.parts)

    def token_counts(self) -> np.ndarray:
        """int64 histogram of token ids over all parts (index = id), from the parts' `.counts.npy`."""
        total = np.zeros(self.max_token_id() + 1, dtype=np.int64)
        for p in self.parts:
            meta = self._meta(p)
            if "_counts" in meta:
                counts = meta["_counts"]
            else:
                path = p.prefix.with_name(meta["counts"])
                if not path.exists():
                    raise ShardError(f"{path}: missing; delete {_suffixed(p.prefix, '.meta.json')} to rebuild both")
                counts = np.load(path)
            total[: len(counts)] += counts
        return total
