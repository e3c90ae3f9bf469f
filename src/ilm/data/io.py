"""Streaming readers and atomic shard writers: jsonl (plain, .gz, .zst), parquet, WARC.

Readers never hold a file in memory and never stop on one bad record: a record that cannot become a
Document is handed to `drop(doc, reason)` (the executor sends it to the removed output tagged with file
and line), so every input record is accounted for. A damaged file (truncated .gz/.zst) raises
InputError naming the file; the executor finishes the other shards and reports it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ilm.data.document import Document

DropFn = Callable[[Document, str], None]
ProgressFn = Callable[[int], None]

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".jsonl.zstd")
PARQUET_SUFFIXES = (".parquet",)
WARC_SUFFIXES = (".warc", ".warc.gz", ".arc.gz")
TEXT_SUFFIXES = (".txt", ".md", ".txt.gz", ".md.gz", ".txt.zst", ".md.zst")  # plain text: one document per file
ALL_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES + WARC_SUFFIXES + TEXT_SUFFIXES
FORMATS = ("JSON Lines ({\"text\": ...} per line; .jsonl, .jsonl.gz, .jsonl.zst), parquet, WARC, "
           "or plain text (.txt, .md: one document per file)")


class InputError(RuntimeError):
    """An input file that cannot be read to its end (truncated or corrupt); the message names the file."""


def list_inputs(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders into a sorted list of readable shards (one input file = one shard); inside a
    folder, names starting with `_` or `.` are a stage's own bookkeeping, not documents. A pipeline's output
    folder (ledger.json beside kept/) stands for its kept documents, so one command's `-o` is the next's input."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and (p / "ledger.json").is_file() and (p / "kept").is_dir():
            p = p / "kept"  # a pipeline's output folder (`ilm data run -o DIR`): its kept documents, not its records
        if p.is_dir():
            out.extend(q for q in sorted(p.rglob("*")) if q.is_file() and q.name.endswith(ALL_SUFFIXES)
                       and not q.name.startswith(("_", ".")))  # `_done.json`, `_mixture.json`: a stage's own records
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    return sorted(dict.fromkeys(out))


class _Counting(io.RawIOBase):
    """Wraps the raw file so progress can report compressed bytes consumed (for MB/s and ETA)."""

    def __init__(self, f: BinaryIO):
        self.f, self.n = f, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        k = self.f.readinto(b)
        self.n += k or 0
        return k

    def close(self) -> None:
        self.f.close()
        super().close()


def _open_binary(path: Path) -> tuple[BinaryIO, _Counting]:
    raw = _Counting(open(path, "rb"))  # noqa: SIM115 - closed with the returned stream
    name = path.name
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=io.BufferedReader(raw, 1 << 20), mode="rb"), raw  # type: ignore[return-value]
    if name.endswith((".zst", ".zstd")):
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(io.BufferedReader(raw, 1 << 20))
        return io.BufferedReader(stream, 1 << 20), raw  # type: ignore[arg-type,return-value]
    return io.BufferedReader(raw, 1 << 20), raw  # type: ignore[return-value]


def read_documents(
    path: str | Path,
    drop: DropFn | None = None,
    counters: dict[str, int] | None = None,
    progress: ProgressFn | None = None,
    on_invalid_utf8: str = "replace",
) -> Iterator[Document]:
    """Yield the documents of one input file, whatever its format."""
    path = Path(path)
    counters = counters if counters is not None else {}
    drop = drop or (lambda doc, reason: None)
    name = path.name
    try:
        if name.endswith(PARQUET_SUFFIXES):
            yield from _read_parquet(path, progress)
        elif name.endswith(WARC_SUFFIXES):
            yield from _read_warc(path, drop, progress)
        elif name.endswith(TEXT_SUFFIXES):
            yield from _read_text(path, progress)
        else:
            yield from _read_jsonl(path, drop, counters, progress, on_invalid_utf8)
    except (EOFError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        if type(exc).__name__ in ("ZstdError", "BadGzipFile") or isinstance(exc, (EOFError, OSError)):
            raise InputError(f"{path}: damaged or truncated file ({type(exc).__name__}: {exc})") from exc
        raise


def _read_jsonl(
    path: Path, drop: DropFn, counters: dict[str, int], progress: ProgressFn | None, on_invalid_utf8: str
) -> Iterator[Document]:
    f, raw = _open_binary(path)
    reported = 0
    src = path.name
    lines = malformed = 0
    with f:
        for lineno, line in enumerate(f, 1):
            if lines >= 100 and lines == malformed:  # no record in the first 100 lines: not JSON Lines
                break
            if lineno % 512 == 0 and progress is not None:
                progress(raw.n - reported)
                reported = raw.n
            if not line.strip():
                continue
            lines += 1
            where = {"file": str(path), "line": lineno}
            try:
                s = line.decode("utf-8")
            except UnicodeDecodeError:
                counters["invalid_utf8"] = counters.get("invalid_utf8", 0) + 1
                s = line.decode("utf-8", errors="replace")
                if on_invalid_utf8 == "quarantine":
                    drop(Document(f"{src}:{lineno}", s, src, None, where), "invalid_utf8")
                    continue
            try:
                rec = json.loads(s)
            except json.JSONDecodeError as exc:
                malformed += 1  # with not_an_object and missing_text: lines that are not a record
                drop(Document(f"{src}:{lineno}", s, src, None, {**where, "error": str(exc)}), "malformed_json")
                continue
            if not isinstance(rec, dict):
                malformed += 1
                drop(Document(f"{src}:{lineno}", s, src, None, where), "not_an_object")
                continue
            if isinstance(rec.get("metadata"), str):
                try:
                    rec["metadata"] = json.loads(rec["metadata"])
                except json.JSONDecodeError:
                    pass
            try:
                doc = Document.from_record(rec, f"{src}:{lineno}", src)
            except KeyError:
                malformed += 1
                drop(Document(f"{src}:{lineno}", s, src, None, where), "missing_text")
                continue
            yield doc
    if lines and malformed == lines:
        raise InputError(f"{path}: none of its first {lines} lines is a JSON record with a text field; expected {FORMATS}")
    if progress is not None:
        progress(raw.n - reported)


def _read_text(path: Path, progress: ProgressFn | None) -> Iterator[Document]:
    """A plain text file is one document (its id is the file name), decoded as UTF-8 with replacement."""
    f, raw = _open_binary(path)
    with f:
        text = f.read().decode("utf-8", errors="replace")
    if progress is not None:
        progress(raw.n)
    if text.strip():
        yield Document(path.name, text, path.name, None, {"file": str(path)})


def _read_parquet(path: Path, progress: ProgressFn | None) -> Iterator[Document]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    size, n_rows, row = path.stat().st_size, max(pf.metadata.num_rows, 1), 0
    for batch in pf.iter_batches(batch_size=2048):
        for rec in batch.to_pylist():
            if isinstance(rec.get("metadata"), str):
                try:
                    rec["metadata"] = json.loads(rec["metadata"])
                except json.JSONDecodeError:
                    pass
            yield Document.from_record(rec, f"{path.name}:{row}", path.name)
            row += 1
        if progress is not None:
            progress(size * batch.num_rows // n_rows)


def _read_warc(path: Path, drop: DropFn, progress: ProgressFn | None) -> Iterator[Document]:
    """WARC 'response' records become documents with the raw HTML as text and metadata.format = html."""
    from warcio.archiveiterator import ArchiveIterator

    raw = _Counting(open(path, "rb"))  # noqa: SIM115
    reported = 0
    with raw:
        for rec in ArchiveIterator(io.BufferedReader(raw, 1 << 20)):
            if rec.rec_type != "response":
                continue
            h = rec.rec_headers
            url = h.get_header("WARC-Target-URI") or ""
            rid = h.get_header("WARC-Record-ID") or url
            ctype = (rec.http_headers.get_header("Content-Type") if rec.http_headers else "") or ""
            body = rec.content_stream().read()
            meta = {"url": url, "content_type": ctype, "file": str(path)}
            text = body.decode(_charset(ctype), errors="replace")
            doc = Document(rid, text, path.name, h.get_header("WARC-Date"), meta)
            if "html" not in ctype.lower():
                drop(doc, "not_html")
            else:
                doc.metadata["format"] = "html"
                yield doc
            if progress is not None:
                progress(raw.n - reported)
                reported = raw.n


def _charset(ctype: str) -> str:
    for part in ctype.split(";"):
        k, _, v = part.strip().partition("=")
        if k.lower() == "charset" and v:
            try:
                "".encode(v.strip('"'))
                return v.strip('"')
            except LookupError:
                break
    return "utf-8"


def fsync_replace(tmp: str | Path, path: str | Path) -> None:
    """Flush `tmp` (already written and closed) to disk, then rename it onto `path` (as the shards are
    written): after a kill or a crash `path` is absent, its old content or the whole new one, never torn."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `<path>.tmp`, then `fsync_replace` it into place."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    fsync_replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class ShardWriter:
    """Writes one shard to `<path>.tmp` and renames it into place on close(), so a shard is whole or absent.

    Output bytes are deterministic (gzip mtime 0, fixed zstd level), so a resumed run is byte-identical.
    """

    def __init__(self, path: str | Path, zstd_level: int = 3):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.count = 0
        self._rows: list[dict[str, Any]] = []
        self._pq = None
        name = self.path.name
        self.parquet = name.endswith(".parquet")
        self._raw = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        if self.parquet:
            self._f: Any = None
        elif name.endswith(".gz"):
            self._f = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0, filename="")
        elif name.endswith((".zst", ".zstd")):
            import zstandard

            self._f = zstandard.ZstdCompressor(level=zstd_level).stream_writer(self._raw, closefd=False)
        else:
            self._f = self._raw

    def write(self, doc: Document) -> None:
        self.count += 1
        rec = doc.to_record()
        if self.parquet:
            rec["metadata"] = json.dumps(rec["metadata"], ensure_ascii=False, sort_keys=True)
            ts = rec["timestamp"]
            rec["timestamp"] = None if ts is None else (ts if isinstance(ts, str) else json.dumps(ts))
            self._rows.append(rec)
            if len(self._rows) >= 8192:
                self._flush_parquet()
            return
        line = json.dumps(rec, ensure_ascii=False, sort_keys=False) + "\n"
        self._f.write(line.encode("utf-8", errors="surrogatepass"))

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(k, pa.string()) for k in ("id", "text", "source", "timestamp", "metadata")])
        table = pa.Table.from_pylist(self._rows, schema=schema)
        if self._pq is None:
            self._pq = pq.ParquetWriter(self._raw, schema, compression="zstd")
        self._pq.write_table(table)
        self._rows = []

    def close(self) -> Path:
        """Finish the file and move it into place; returns the final path."""
        if self.parquet:
            if self._rows or self._pq is None:
                self._flush_parquet()
            self._pq.close()
        elif self._f is not self._raw:
            self._f.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._raw.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def write_documents(path: str | Path, docs: Iterator[Document] | list[Document]) -> int:
    """Write documents to one file (format from the extension); returns the count."""
    w = ShardWriter(path)
    for d in docs:
        w.write(d)
    w.close()
    return w.count


def read_all(paths: list[str | Path] | str | Path) -> list[Document]:
    """Read every document of files/folders (tests, reports); not for large data."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return [d for p in list_inputs(list(paths)) for d in read_documents(p)]
