"""Repository input: folders, archives (.zip, .tar[.gz|.bz2|.xz], .tgz) or jsonl of files -> file documents.

Every file becomes one Document (id `repo/path`, metadata repo, path, language, bytes), including the
ones that cannot be used: a binary, undecodable, oversized, empty or unknown-language file, a symlink
(never followed, so a symlink loop cannot hang the walk) and an empty repository become records with
`metadata.skip = reason` and no text, so the first pipeline step drops them *with that reason* and the
ledger accounts for every file. Files of one repository always land in the same shard, in path order,
because the dependency sort needs a whole repository at once.
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ilm.data.code.languages import detect_language, looks_binary
from ilm.data.document import Document
from ilm.data.io import JSONL_SUFFIXES, read_documents, write_documents

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Never part of a repository's content (VCS internals, bytecode caches): not read, counted.
IGNORED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__"})


@dataclass
class IngestConfig:
    """Limits of the input stage."""

    max_file_bytes: int = 1 << 20  # larger files are skipped as too_large (the seed's pipelines use ~1 MB)
    shard_bytes: int = 2 << 20  # repositories are packed into shards of about this size (never split)


def _record(repo: str, path: str, text: str, ts: float | None, skip: str = "", language: str = "", nbytes: int = 0) -> Document:
    meta: dict[str, Any] = {"repo": repo, "path": path, "language": language, "bytes": nbytes}
    if skip:
        meta["skip"] = skip
    return Document(f"{repo}/{path}", text, "code", ts, meta)


def classify(repo: str, path: str, data: bytes, ts: float | None, cfg: IngestConfig, size: int | None = None) -> Document:
    """One file's bytes -> a code document, or a skip record naming why it cannot be used."""
    size = len(data) if size is None else size
    if size > cfg.max_file_bytes:
        return _record(repo, path, "", ts, "too_large", nbytes=size)
    if looks_binary(data):
        return _record(repo, path, "", ts, "binary", nbytes=size)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return _record(repo, path, "", ts, "undecodable", nbytes=size)
    return classify_text(repo, path, text, ts, size)


def classify_text(repo: str, path: str, text: str, ts: float | None, size: int | None = None) -> Document:
    size = len(text.encode("utf-8", "surrogatepass")) if size is None else size
    if "\x00" in text[:8192]:
        return _record(repo, path, "", ts, "binary", nbytes=size)
    if not text.strip():
        return _record(repo, path, "", ts, "empty_file", nbytes=size)
    lang = detect_language(path, text[:8192])
    if not lang:
        return _record(repo, path, "", ts, "unknown_language", nbytes=size)
    return _record(repo, path, text, ts, language=lang, nbytes=size)


def _repo_name(p: Path) -> str:
    name = p.name
    for suf in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def read_directory(root: Path, cfg: IngestConfig, repo: str | None = None) -> Iterator[Document]:
    """Walk a repository folder without following symlinks; every entry yields a document or a skip."""
    repo = repo or _repo_name(root.resolve())
    root_real = root.resolve()
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        here = Path(dirpath)
        for d in list(dirnames):
            if (here / d).is_symlink():  # a linked folder: recorded, never descended (no loops)
                entries.append(((here / d).relative_to(root).as_posix(), here / d))
                dirnames.remove(d)
        entries.extend(((here / f).relative_to(root).as_posix(), here / f) for f in filenames)
    n = 0
    for rel, full in sorted(entries):
        n += 1
        yield _read_entry(repo, rel, full, root_real, cfg)
    if n == 0:
        yield _record(repo, "", "", None, "empty_repository")


def _read_entry(repo: str, rel: str, full: Path, root_real: Path, cfg: IngestConfig) -> Document:
    try:
        st = full.lstat()
    except OSError:
        return _record(repo, rel, "", None, "unreadable")
    ts = st.st_mtime
    if stat.S_ISLNK(st.st_mode):
        try:
            target = full.resolve(strict=True)
        except (RuntimeError, OSError) as exc:  # RuntimeError / ELOOP: a loop; FileNotFoundError: dangling
            loop = isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == 40
            return _record(repo, rel, "", ts, "symlink_loop" if loop else "broken_symlink")
        inside = target == root_real or root_real in target.parents
        return _record(repo, rel, "", ts, "symlink" if inside else "symlink_outside_repo")
    if not stat.S_ISREG(st.st_mode):
        return _record(repo, rel, "", ts, "not_a_regular_file")
    try:
        with open(full, "rb") as f:
            data = f.read(cfg.max_file_bytes + 1)
    except OSError:
        return _record(repo, rel, "", ts, "unreadable")
    return classify(repo, rel, data, ts, cfg, size=st.st_size)


def _strip_common_root(names: list[str]) -> str:
    tops = {n.split("/", 1)[0] for n in names if n}
    if len(tops) == 1 and all("/" in n for n in names if n):
        return next(iter(tops)) + "/"
    return ""


def read_archive(path: Path, cfg: IngestConfig) -> Iterator[Document]:
    """A zip or tar of one repository (a single top-level folder is stripped from paths)."""
    repo = _repo_name(path)
    n = 0
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            infos = [i for i in z.infolist() if not i.is_dir()]
            prefix = _strip_common_root([i.filename for i in infos])
            for info in sorted(infos, key=lambda i: i.filename):
                rel = info.filename[len(prefix):]
                ts = _zip_time(info)
                n += 1
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    yield _record(repo, rel, "", ts, "symlink")
                elif info.file_size > cfg.max_file_bytes:
                    yield _record(repo, rel, "", ts, "too_large", nbytes=info.file_size)
                else:
                    yield classify(repo, rel, z.read(info), ts, cfg)
    else:
        with tarfile.open(path) as t:
            members = [m for m in t.getmembers() if not m.isdir()]
            prefix = _strip_common_root([m.name for m in members])
            for m in sorted(members, key=lambda m: m.name):
                rel = m.name[len(prefix):]
                n += 1
                if m.issym() or m.islnk():
                    yield _record(repo, rel, "", float(m.mtime), "symlink")
                elif not m.isfile():
                    yield _record(repo, rel, "", float(m.mtime), "not_a_regular_file")
                elif m.size > cfg.max_file_bytes:
                    yield _record(repo, rel, "", float(m.mtime), "too_large", nbytes=m.size)
                else:
                    f = t.extractfile(m)
                    yield classify(repo, rel, f.read() if f else b"", float(m.mtime), cfg)
    if n == 0:
        yield _record(repo, "", "", None, "empty_repository")


def _zip_time(info: zipfile.ZipInfo) -> float:
    import datetime as dt

    try:
        return dt.datetime(*info.date_time, tzinfo=dt.UTC).timestamp()
    except ValueError:
        return 0.0


def read_file_records(path: Path, cfg: IngestConfig) -> Iterator[Document]:
    """jsonl of files: each record has repo, path and text/content (optionally language, timestamp)."""
    for i, doc in enumerate(read_documents(path)):
        repo = str(doc.metadata.get("repo") or doc.metadata.get("repo_name") or path.stem)
        rel = str(doc.metadata.get("path") or doc.metadata.get("filepath") or f"record-{i}")
        out = classify_text(repo, rel, doc.text, doc.timestamp)
        if not out.metadata.get("skip") and len(doc.text) > cfg.max_file_bytes:
            out = _record(repo, rel, "", doc.timestamp, "too_large", nbytes=len(doc.text))
        if doc.metadata.get("language") and not out.metadata.get("skip"):
            out.metadata["language"] = str(doc.metadata["language"]).lower()
        yield out


def iter_sources(sources: list[str | Path], cfg: IngestConfig) -> Iterator[Document]:
    """Documents of every input: a folder is one repository, an archive is one, a jsonl holds many."""
    for src in map(Path, sources):
        if src.is_dir():
            yield from read_directory(src, cfg)
        elif src.name.endswith(ARCHIVE_SUFFIXES):
            try:
                yield from read_archive(src, cfg)
            except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
                yield _record(_repo_name(src), "", "", None, "damaged_archive")
                _ = exc
        elif src.name.endswith(JSONL_SUFFIXES):
            yield from read_file_records(src, cfg)
        elif src.exists():
            raise ValueError(f"{src}: not a folder, archive ({', '.join(ARCHIVE_SUFFIXES)}) or jsonl of files")
        else:
            raise FileNotFoundError(f"input not found: {src}")


def ingest(sources: list[str | Path], out_dir: str | Path, cfg: IngestConfig | None = None) -> dict[str, Any]:
    """Write every input file as a document into `out_dir/shard-XXXXX.jsonl.zst`, whole repositories
    per shard, and a `_done.json` summary; a finished ingest is reused (resume)."""
    cfg = cfg or IngestConfig()
    out = Path(out_dir)
    done = out / "_done.json"
    if done.exists():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    by_repo: dict[str, list[Document]] = {}
    for doc in iter_sources(sources, cfg):
        by_repo.setdefault(doc.metadata["repo"], []).append(doc)
    shards: list[list[Document]] = [[]]
    size = 0
    for group in by_repo.values():
        docs = sorted(group, key=lambda d: d.metadata["path"])
        nbytes = sum(len(d.text) for d in docs)
        if shards[-1] and size + nbytes > cfg.shard_bytes:
            shards.append([])
            size = 0
        shards[-1].extend(docs)
        size += nbytes
    paths = []
    for i, docs in enumerate(s for s in shards if s):
        p = out / f"shard-{i:05d}.jsonl.zst"
        write_documents(p, docs)
        paths.append(str(p))
    skips: dict[str, int] = {}
    for docs in by_repo.values():
        for d in docs:
            if d.metadata.get("skip"):
                skips[d.metadata["skip"]] = skips.get(d.metadata["skip"], 0) + 1
    summary = {"repos": len(by_repo), "files": sum(len(v) for v in by_repo.values()), "shards": paths,
               "skipped_at_input": dict(sorted(skips.items()))}
    done.write_text(json.dumps(summary, indent=1))
    return summary
