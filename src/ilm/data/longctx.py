"""Long-context samples for SFT and RLHF (docs/recipe.md, Long context and tools): repository files in
dependency order and long documents, concatenated into samples of a target window (default 32,768 tokens).

The policy, stated once and counted in the report (`length_report`):
- every sample has at most `window` tokens, counted with the counter given (the tokenizer the samples
  will be trained with; the approximate 4-bytes-per-token counter otherwise), the assembled text re-counted;
- a sample holds units of one source only: files of one repository in dependency order (imports first,
  `ilm.data.code.deps`), or long documents in input order. Units are never reordered to fill a sample;
- a unit (file or document) is never split unless it alone exceeds the window; then it is cut at line
  boundaries (a single line longer than the window, by characters) into consecutive parts that each fit,
  and counted (`split_files`, `split_documents`, `parts`);
- a sample is closed when the next unit does not fit in what is left of it.

`long_context_conversations` turns each sample into a ChatML conversation whose answer can only be read
in the long context (which file defines a name; which line follows a quoted one), so SFT's loss on the
assistant part trains retrieval over the whole window; without the assistant turn the same records are
PPO queries. `ilm sft` recipes use this through `[data.long_context]` (`ilm.train.sft.LongContextData`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilm.data.code.deps import order_repository
from ilm.data.code.format import to_markdown
from ilm.data.code.repo import IngestConfig, read_directory
from ilm.data.code.samples import approx_tokens, split_lines
from ilm.data.io import JSONL_SUFFIXES, atomic_write_text, list_inputs, read_documents

DEFAULT_WINDOW = 32_768
Count = Callable[[str], int]


@dataclass(frozen=True)
class Unit:
    """One file of a repository, or one long document: the thing a sample never splits if it can help it."""

    source: str  # the repository's name, or "documents"
    name: str  # the file's path, or the document's id
    text: str
    kind: str = "file"  # "file" | "document"
    language: str = ""


@dataclass
class LongSample:
    source: str
    kind: str
    text: str
    tokens: int
    members: list[tuple[str, str]] = field(default_factory=list)  # (unit name, the unit's text in this sample)
    split: list[str] = field(default_factory=list)  # names of units of which this sample holds a part

    def to_record(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "tokens": self.tokens, "text": self.text,
                "members": [m[0] for m in self.members], "split": self.split}


# ----------------------------------------------------------------------------- inputs


def repository_units(paths: Iterable[str | Path]) -> list[Unit]:
    """Files of every repository in dependency order.

    A path is either a repository folder (read with the code pipeline's reader, ordered with its dependency
    resolver) or a code pipeline output (documents carrying `repo`, `path` and `dep_rank`; kept in that order).
    """
    units: list[Unit] = []
    for p in map(Path, paths):
        if p.is_dir() and not any(q.name.endswith(JSONL_SUFFIXES) for q in p.iterdir()):
            docs = [d for d in read_directory(p, IngestConfig()) if not d.metadata.get("skip") and d.text]
            by_path = {d.metadata["path"]: d for d in docs}
            if not by_path:
                continue
            repo = docs[0].metadata["repo"]
            order, _ = order_repository(repo, {k: d.text for k, d in by_path.items()})
            units += [Unit(repo, k, by_path[k].text, "file", by_path[k].metadata.get("language", "")) for k in order]
            continue
        repos: dict[str, list] = {}
        for f in list_inputs([p]):
            for d in read_documents(f):
                repos.setdefault(str(d.metadata.get("repo", "")), []).append(d)
        for repo, docs in repos.items():
            if all("dep_rank" in d.metadata for d in docs):
                docs.sort(key=lambda d: d.metadata["dep_rank"])
            else:
                by_path = {str(d.metadata.get("path", d.id)): d for d in docs}
                docs = [by_path[k] for k in order_repository(repo, {k: d.text for k, d in by_path.items()})[0]]
            units += [Unit(repo, str(d.metadata.get("path", d.id)), d.text, "file", d.metadata.get("language", ""))
                      for d in docs]
    return units


def document_units(paths: Iterable[str | Path], min_chars: int = 0) -> list[Unit]:
    """Long documents (text files are one document each; jsonl/parquet shards one per record), input order."""
    return [Unit("documents", d.id, d.text, "document") for f in list_inputs(list(paths))
            for d in read_documents(f) if len(d.text) >= min_chars]


# ----------------------------------------------------------------------------- packing


def _render(unit: Unit, text: str, name: str) -> str:
    if unit.kind == "file":
        return to_markdown(name, unit.language, text) + "\n"
    return text.rstrip("\n") + "\n\n"


def _cut(text: str, budget: int, count: Count) -> list[str]:
    """Text cut into consecutive pieces of at most ~budget tokens: at line ends, or inside an over-long line."""
    if count(text) <= budget or len(text) <= 1:
        return [text]
    lines = text.splitlines(keepends=True)
    if len(lines) == 1:
        half = len(text) // 2
        return _cut(text[:half], budget, count) + _cut(text[half:], budget, count)
    parts = split_lines(text, budget, count)  # the code pipeline's cut at line ends
    return [q for p in parts for q in _cut(p, budget, count)]  # re-counted: counts need not add up


def _parts(unit: Unit, window: int, count: Count) -> list[tuple[str, str, str]]:
    """(rendered piece, name, raw text) for a unit: one piece when it fits the window, else its parts."""
    whole = _render(unit, unit.text, unit.name)
    if count(whole) <= window:
        return [(whole, unit.name, unit.text)]
    budget = max(1, window - count(_render(unit, "", f"{unit.name} (part 99/99)")) - 8)
    while True:
        texts = _cut(unit.text, budget, count)
        names = [f"{unit.name} (part {k + 1}/{len(texts)})" for k in range(len(texts))]
        pieces = [_render(unit, t, n) for t, n in zip(texts, names)]
        if all(count(p) <= window for p in pieces) or budget == 1:
            return list(zip(pieces, names, texts))
        budget = max(1, budget * 3 // 4)


def pack_samples(units: Iterable[Unit], window: int = DEFAULT_WINDOW, count: Count = approx_tokens,
                 ) -> tuple[list[LongSample], dict[str, int]]:
    """Units (grouped by source, each source in its order) -> samples of at most `window` tokens; counts."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    counts = {"files": 0, "documents": 0, "split_files": 0, "split_documents": 0, "parts": 0}
    samples: list[LongSample] = []
    cur: list[tuple[str, str, str, Unit]] = []  # (piece, name, raw text, unit)
    used = 0

    def flush() -> None:
        nonlocal cur, used
        while cur:
            # counts need not add up over a join: drop members from the end until the whole text fits
            k = len(cur)
            while k > 1 and count("".join(p[0] for p in cur[:k])) > window:
                k -= 1
            take, cur = cur[:k], cur[k:]
            text = "".join(p[0] for p in take)
            u = take[0][3]
            samples.append(LongSample(u.source, u.kind, text, count(text), [(p[1], p[2]) for p in take],
                                      list(dict.fromkeys(p[3].name for p in take if p[1] != p[3].name))))
        used = 0

    for u in units:
        counts["files" if u.kind == "file" else "documents"] += 1
        if cur and cur[-1][3].source != u.source:
            flush()
        parts = _parts(u, window, count)
        if len(parts) > 1:
            counts["split_files" if u.kind == "file" else "split_documents"] += 1
            counts["parts"] += len(parts)
        for piece, name, raw in parts:
            n = count(piece)
            if cur and used + n > window:
                flush()
            cur.append((piece, name, raw, u))
            used += n
    flush()
    return samples, counts


def length_report(samples: list[LongSample], window: int, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """The length distribution (min / mean / percentiles / max, a power-of-two histogram, fill) and the counts."""
    lengths = sorted(s.tokens for s in samples)
    n = len(lengths)

    def pct(q: float) -> int:
        return lengths[min(n - 1, int(q * n))] if n else 0

    hist: dict[str, int] = {}
    lo = 0
    hi = 1024
    while lo < window:
        hi = min(hi, window)
        hist[f"{lo + 1}-{hi}"] = sum(lo < t <= hi for t in lengths)
        lo, hi = hi, hi * 2
    return {
        "window": window, "samples": n, "tokens": sum(lengths),
        "min": lengths[0] if n else 0, "mean": round(sum(lengths) / n, 1) if n else 0.0,
        "p50": pct(0.5), "p90": pct(0.9), "max": lengths[-1] if n else 0,
        "fill": round(sum(lengths) / (n * window), 4) if n else 0.0,
        "over_window": sum(t > window for t in lengths),
        "histogram": hist,
        "by_kind": {k: sum(s.kind == k for s in samples) for k in ("file", "document")},
        "sources": len({s.source for s in samples}),
        **(counts or {}),
        "policy": "each sample <= window; one source per sample; files in dependency order; a unit is split "
                  "only when it alone exceeds the window (split_files / split_documents, parts)",
    }


# ----------------------------------------------------------------------------- conversations

_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+([A-Za-z_]\w*)", re.MULTILINE)
LOCATE = "In the repository above, which file defines `{name}`? Answer with the path only."
MAX_QUOTE = 200  # characters of a quoted line (question and answer stay short next to the context)
NEXT_LINE = "In the text above, which line comes right after this one? Quote it exactly.\n\n{line}"


def _locate_definition(sample: LongSample, rng: random.Random) -> tuple[str, str] | None:
    where: dict[str, set[str]] = {}
    for name, text in sample.members:
        path = name.split(" (part ")[0]
        for m in _DEF.finditer(text):
            where.setdefault(m.group(1), set()).add(path)
    unique = sorted(n for n, paths in where.items() if len(paths) == 1 and not n.startswith("__"))
    if not unique:
        return None
    name = rng.choice(unique)
    return LOCATE.format(name=name), next(iter(where[name]))


def _next_line(sample: LongSample, rng: random.Random) -> tuple[str, str] | None:
    lines = [ln.strip() for ln in sample.text.splitlines() if ln.strip()]
    seen: dict[str, int] = {}
    for ln in lines:
        seen[ln] = seen.get(ln, 0) + 1
    ok = [i for i in range(len(lines) - 1)
          if 20 <= len(lines[i]) <= MAX_QUOTE and seen[lines[i]] == 1 and lines[i + 1] != lines[i]
          and 2 <= len(lines[i + 1]) <= MAX_QUOTE]
    if not ok:
        return None
    i = rng.choice(ok)
    return NEXT_LINE.format(line=lines[i]), lines[i + 1]


def long_context_conversations(samples: list[LongSample], seed: int = 0) -> tuple[list[dict], dict[str, int]]:
    """One ChatML conversation per sample (the context, then a question only the context answers); counts."""
    rng = random.Random(seed)
    out: list[dict] = []
    counts = {"locate_definition": 0, "next_line": 0, "no_question": 0}
    for s in samples:
        qa = _locate_definition(s, rng) if s.kind == "file" else None
        task = "locate_definition"
        if qa is None:
            qa, task = _next_line(s, rng), "next_line"
        if qa is None:
            counts["no_question"] += 1
            continue
        counts[task] += 1
        question, answer = qa
        out.append({"messages": [{"role": "user", "content": f"{s.text.rstrip()}\n\n{question}"},
                                 {"role": "assistant", "content": answer}],
                    "category": "long_context", "task": task, "source": s.source, "context_tokens": s.tokens})
    return out, counts


def build(repos: Iterable[str | Path] = (), documents: Iterable[str | Path] = (), window: int = DEFAULT_WINDOW,
          count: Count = approx_tokens, seed: int = 0, min_document_chars: int = 0,
          ) -> tuple[list[LongSample], list[dict], dict[str, Any]]:
    """Samples, their conversations and the report, from repository and long-document inputs."""
    units = repository_units(repos) + document_units(documents, min_document_chars)
    samples, counts = pack_samples(units, window, count)
    convs, tasks = long_context_conversations(samples, seed)
    report = length_report(samples, window, counts)
    report["conversations"] = tasks
    return samples, convs, report


def write(out_dir: str | Path, samples: list[LongSample], convs: list[dict], report: dict[str, Any]) -> dict[str, Path]:
    """samples.jsonl, sft.jsonl (conversations), queries.jsonl (the same without the answer: PPO queries),
    report.json -- each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{k}.jsonl" for k in ("samples", "sft", "queries")}
    queries = [{**c, "messages": c["messages"][:-1]} for c in convs]
    for key, rows in (("samples", [s.to_record() for s in samples]), ("sft", convs), ("queries", queries)):
        atomic_write_text(paths[key], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    paths["report"] = out / "report.json"
    atomic_write_text(paths["report"], json.dumps(report, indent=1))
    return paths
