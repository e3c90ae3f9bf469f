"""Long-text selection (docs/recipe.md, Pretraining data): length, statistical filters, the perplexity-difference test.

1. `LongTextLength`: documents of at least 32 KB (UTF-8 bytes) by default.
2. `LongTextStats`: statistics whose only job is to remove *meaningless* text (they are reliable on long
   documents because every statistic averages over thousands of words): zlib compression ratio (too low:
   repetition; too high: random or encoded bytes), unique-token rate, line-length statistics, sentence
   punctuation and connective-word rates (tables, keyword lists and logs have almost none), duplicated
   lines and repeated 10-grams. They never rank quality.
3. `PerplexityDifference`: split the start of a document into S1 | S2 (token lengths configurable) and ask
   an ilm checkpoint for ppl(S2 | S1) and ppl(S2). In coherent text the context helps, ppl(S2 | S1) <
   ppl(S2); when it does not (ratio above the threshold, 1.0 plus an optional margin, per domain) the
   context disturbs the continuation and the document is dropped (`context_hurts`).
4. `boundary_report`: the documents nearest each domain's threshold, both sides, as Markdown or HTML, for
   a person to judge whether the threshold sits in the right place.
"""

from __future__ import annotations

import html
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ilm.data.base import Context, Filter, Step, cjk_fraction, tokens
from ilm.data.document import Document

CONNECTIVES_EN = frozenset([
    "the", "a", "an", "and", "or", "but", "of", "to", "in", "on", "at", "for", "with", "as", "by", "from", "that",
    "which", "who", "this", "these", "those", "is", "are", "was", "were", "be", "been", "it", "its", "not", "no",
    "so", "because", "however", "therefore", "thus", "although", "while", "when", "then", "than", "if", "also", "into",
])
CONNECTIVES_ZH = frozenset([
    "的", "了", "是", "在", "和", "与", "也", "就", "而", "但", "因为", "所以", "如果", "虽然", "然后", "这", "那", "之", "其",
    "并", "或",
])
_SENT_PUNCT = re.compile(r"[.!?;:,。！？；：，、]")


def text_stats(text: str, sample_chars: int = 200_000) -> dict[str, float]:
    """The statistics `LongTextStats` thresholds, on the first `sample_chars` characters."""
    s = text[:sample_chars]
    raw = s.encode("utf-8", "surrogatepass")
    cjk = cjk_fraction(s) >= 0.3
    toks = tokens(s, cjk)
    n = max(len(toks), 1)
    lines = [x for x in s.split("\n") if x.strip()]
    n_lines = max(len(lines), 1)
    line_counts = Counter(x.strip() for x in lines)
    dup_line_chars = sum(len(k) * (c - 1) for k, c in line_counts.items() if c > 1)
    low = [t.lower() for t in toks]
    conn = CONNECTIVES_ZH if cjk else CONNECTIVES_EN
    if cjk:  # count single-character and two-character connectives in the character stream
        joined = "".join(low)
        n_conn = sum(joined.count(w) for w in conn)
    else:
        n_conn = sum(1 for t in low if t in conn)
    grams = Counter(hash(tuple(low[i : i + 10])) for i in range(max(len(low) - 9, 0)))
    rep10 = sum(c - 1 for c in grams.values() if c > 1) / max(sum(grams.values()), 1)
    return {
        "compression_ratio": round(len(zlib.compress(raw, 6)) / max(len(raw), 1), 4),
        "unique_token_rate": round(len(set(low)) / n, 4),
        "mean_line_chars": round(sum(map(len, lines)) / n_lines, 2),
        "short_line_fraction": round(sum(len(x.strip()) < 20 for x in lines) / n_lines, 4),
        "punctuation_rate": round(len(_SENT_PUNCT.findall(s)) / n, 4),
        "connective_rate": round(n_conn / n, 4),
        "duplicate_line_fraction": round(dup_line_chars / max(len(s), 1), 4),
        "repeated_10gram_fraction": round(rep10, 4),
    }


@dataclass
class LongTextLength(Filter):
    """Keeps documents of at least `min_bytes` UTF-8 bytes (and at most `max_bytes` when > 0)."""

    type: ClassVar[str] = "longtext_length"
    min_bytes: int = 32 * 1024
    max_bytes: int = 0

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        n = len(doc.text) if doc.text.isascii() else len(doc.text.encode("utf-8", "surrogatepass"))
        doc.metadata["bytes"] = n
        if n < self.min_bytes:
            return False, "too_short"
        if self.max_bytes and n > self.max_bytes:
            return False, "too_long"
        return True


@dataclass
class LongTextStats(Filter):
    """Drops meaningless long text; the reason names the first statistic outside its range."""

    type: ClassVar[str] = "longtext_stats"
    min_compression_ratio: float = 0.15
    max_compression_ratio: float = 0.75
    min_unique_token_rate: float = 0.02
    max_unique_token_rate: float = 0.9
    min_mean_line_chars: float = 15.0
    max_short_line_fraction: float = 0.8
    min_punctuation_rate: float = 0.02
    min_connective_rate: float = 0.03
    max_duplicate_line_fraction: float = 0.3
    max_repeated_10gram_fraction: float = 0.3
    sample_chars: int = 200_000

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        st = text_stats(doc.text, self.sample_chars)
        doc.metadata["longtext_stats"] = st
        checks = [
            ("low_compression_ratio", st["compression_ratio"] < self.min_compression_ratio),
            ("high_compression_ratio", st["compression_ratio"] > self.max_compression_ratio),
            ("low_unique_token_rate", st["unique_token_rate"] < self.min_unique_token_rate),
            ("high_unique_token_rate", st["unique_token_rate"] > self.max_unique_token_rate),
            ("short_lines", st["mean_line_chars"] < self.min_mean_line_chars or st["short_line_fraction"] > self.max_short_line_fraction),
            ("no_punctuation", st["punctuation_rate"] < self.min_punctuation_rate),
            ("no_connectives", st["connective_rate"] < self.min_connective_rate),
            ("duplicate_lines", st["duplicate_line_fraction"] > self.max_duplicate_line_fraction),
            ("repeated_ngrams", st["repeated_10gram_fraction"] > self.max_repeated_10gram_fraction),
        ]
        for reason, bad in checks:
            if bad:
                return False, reason
        return True


@dataclass
class PerplexityDifference(Step):
    """Drops documents whose first S1 tokens make the next S2 tokens *less* predictable.

    ratio = ppl(S2 | S1) / ppl(S2); drop when ratio > threshold (1.0 = the seed's rule; 1.0 + m adds a
    margin m), with `thresholds[domain]` overriding per `metadata[domain_key]`. Documents with fewer than
    `min_tokens` tokens pass unscored (length selection is the step that removes short text).
    """

    type: ClassVar[str] = "ppl_diff"
    checkpoint: str = ""  # an ilm/HF checkpoint directory (ilm.model.hf.load_checkpoint)
    tokenizer: str = ""  # default: the checkpoint directory
    s1_tokens: int = 512
    s2_tokens: int = 512
    offset_tokens: int = 0  # S1 starts here
    threshold: float = 1.0
    thresholds: dict[str, float] = field(default_factory=dict)
    domain_key: str = "domain"
    min_tokens: int = 32
    batch_size: int = 8
    device: str = "cpu"
    excerpt_chars: int = 240

    def __post_init__(self) -> None:
        self._model: Any = None
        self._tok: Any = None

    def threshold_for(self, doc: Document) -> float:
        return float(self.thresholds.get(str(doc.metadata.get(self.domain_key, "")), self.threshold))

    def load(self) -> tuple[Any, Any]:
        if self._model is None:
            if not self.checkpoint:
                raise ValueError("ppl_diff: set `checkpoint` to an ilm checkpoint directory")
            from ilm.model.hf import load_checkpoint
            from ilm.tokenizer import load_tokenizer

            self._model = load_checkpoint(self.checkpoint, device=self.device).eval()
            self._tok = load_tokenizer(self.tokenizer or self.checkpoint)
            need = 1 + self.s1_tokens + self.s2_tokens
            if need > self._model.config.max_position_embeddings:
                raise ValueError(f"ppl_diff: 1 + s1_tokens + s2_tokens = {need} exceeds the model's "
                                 f"{self._model.config.max_position_embeddings} positions")
        return self._model, self._tok

    def split(self, ids: list[int]) -> tuple[list[int], list[int]] | None:
        """S1 and S2 token ids, shrunk proportionally for documents shorter than offset + s1 + s2."""
        ids = ids[self.offset_tokens :] if len(ids) > self.offset_tokens + self.min_tokens else ids
        total = self.s1_tokens + self.s2_tokens
        if len(ids) < self.min_tokens:
            return None
        if len(ids) < total:
            k = len(ids) * self.s1_tokens // total
            return ids[:k], ids[k:]
        return ids[: self.s1_tokens], ids[self.s1_tokens : total]

    def score(self, texts: list[str]) -> list[dict[str, Any] | None]:
        """Per text: ppl_ctx, ppl_noctx, ratio and excerpts around the split (None when too short)."""
        model, tok = self.load()
        chars = (self.offset_tokens + self.s1_tokens + self.s2_tokens) * 16
        out: list[dict[str, Any] | None] = [None] * len(texts)
        splits = []
        for i, t in enumerate(texts):
            ids = tok.encode(t[:chars])
            if len(ids) < self.offset_tokens + self.s1_tokens + self.s2_tokens and len(t) > chars:
                ids = tok.encode(t)
            sp = self.split(ids)
            if sp is not None and sp[0] and sp[1]:
                splits.append((i, sp))
        for k in range(0, len(splits), self.batch_size):
            chunk = splits[k : k + self.batch_size]
            with_ctx = self._nll(model, tok, [s1 + s2 for _, (s1, s2) in chunk], [len(s1) for _, (s1, _) in chunk])
            no_ctx = self._nll(model, tok, [s2 for _, (_, s2) in chunk], [0] * len(chunk))
            for (i, (s1, s2)), a, b in zip(chunk, with_ctx, no_ctx):
                out[i] = {
                    "ppl_ctx": round(math.exp(a), 4), "ppl_noctx": round(math.exp(b), 4),
                    "ppl_ratio": round(math.exp(a - b), 4), "s1_tokens": len(s1), "s2_tokens": len(s2),
                    "s1_tail": tok.decode(s1)[-self.excerpt_chars :], "s2_head": tok.decode(s2)[: self.excerpt_chars],
                }
        return out

    @staticmethod
    def _nll(model: Any, tok: Any, seqs: list[list[int]], starts: list[int]) -> list[float]:
        """Mean next-token NLL of seq[start:] given <s> + seq[:start], for a right-padded batch."""
        import torch

        device = next(model.parameters()).device
        width = 1 + max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tok.pad_id, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, 0] = tok.bos_id
            ids[r, 1 : 1 + len(s)] = torch.tensor(s, dtype=torch.long)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids.to(device)).float(), dim=-1).cpu()
        out = []
        for r, (s, st) in enumerate(zip(seqs, starts)):
            pos = torch.arange(st, len(s))  # logits at position p predict input p + 1 = seq[p]
            target = ids[r, pos + 1]
            out.append(float(-logp[r, pos, target].mean()))
        return out

    def run(self, docs: Iterator[Document], ctx: Context) -> Iterator[Document]:
        batch: list[Document] = []
        for d in docs:
            batch.append(d)
            if len(batch) >= self.batch_size * 4:
                yield from self._judge(batch, ctx)
                batch = []
        yield from self._judge(batch, ctx)

    def _judge(self, batch: list[Document], ctx: Context) -> Iterator[Document]:
        if not batch:
            return
        for d, s in zip(batch, self.score([d.text for d in batch])):
            if s is None:
                ctx.count("ppl_unscored_short")
                yield d
                continue
            thr = self.threshold_for(d)
            s["ppl_threshold"] = thr
            d.metadata["ppl"] = s
            if s["ppl_ratio"] > thr:
                ctx.drop(d, "context_hurts", ppl_ratio=s["ppl_ratio"], threshold=thr)
            else:
                yield d

    def __getstate__(self) -> dict[str, Any]:  # model and tokenizer are reloaded in each worker
        state = dict(self.__dict__)
        state["_model"] = state["_tok"] = None
        return state


def _scored(out_dir: Path, domain_key: str) -> list[dict[str, Any]]:
    from ilm.data.io import list_inputs, read_documents

    rows = []
    for sub, verdict in (("kept", "kept"), ("removed", "dropped")):
        if not (out_dir / sub).exists():
            continue
        for p in list_inputs([out_dir / sub]):
            for d in read_documents(p):
                s = d.metadata.get("ppl")
                if not isinstance(s, dict) or "ppl_ratio" not in s:
                    continue
                if verdict == "dropped" and d.metadata.get("removed", {}).get("reason") != "context_hurts":
                    continue
                rows.append({"id": d.id, "domain": str(d.metadata.get(domain_key, "")), "verdict": verdict, **s})
    return rows


def boundary_report(out_dir: str | Path, path: str | Path | None = None, n: int = 5, fmt: str = "md",
                    domain_key: str = "domain") -> Path:
    """Write the n documents nearest the threshold on each side, per domain, for human review."""
    out_dir = Path(out_dir)
    rows = _scored(out_dir, domain_key)
    path = Path(path) if path else out_dir / f"ppl_boundary.{'html' if fmt == 'html' else 'md'}"
    domains: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        domains.setdefault(r["domain"], []).append(r)
    sections = []
    for dom in sorted(domains):
        rs = domains[dom]
        thr = rs[0]["ppl_threshold"]
        below = sorted((r for r in rs if r["ppl_ratio"] <= thr), key=lambda r: thr - r["ppl_ratio"])[:n]
        above = sorted((r for r in rs if r["ppl_ratio"] > thr), key=lambda r: r["ppl_ratio"] - thr)[:n]
        dropped = sum(r["verdict"] == "dropped" for r in rs)
        sections.append((dom or "(no domain)", thr, len(rs), dropped, below, above))
    path.write_text(_render_html(sections) if fmt == "html" else _render_md(sections), encoding="utf-8")
    return path


def _clip(s: str) -> str:
    return " ".join(s.split())


def _render_md(sections: list[Any]) -> str:
    out = ["# Perplexity-difference filter: documents nearest the threshold", "",
           "ratio = ppl(S2 | S1) / ppl(S2); a document is dropped when its ratio is above its domain's threshold.", ""]
    for dom, thr, total, dropped, below, above in sections:
        out += [f"## {dom}: threshold {thr}", "", f"{total} scored, {dropped} dropped ({dropped / max(total, 1):.1%}).", ""]
        for title, rs in (("Just kept (ratio <= threshold)", below), ("Just dropped (ratio > threshold)", above)):
            out += [f"### {title}", "", "| id | ratio | ppl(S2 given S1) | ppl(S2) | end of S1 | start of S2 |", "|---|---|---|---|---|---|"]
            for r in rs:
                cells = [r["id"], f"{r['ppl_ratio']:.4f}", f"{r['ppl_ctx']:.2f}", f"{r['ppl_noctx']:.2f}",
                         _clip(r["s1_tail"]), _clip(r["s2_head"])]
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            out.append("")
    return "\n".join(out) + "\n"


def _render_html(sections: list[Any]) -> str:
    e = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>ppl boundary</title>",
             "<style>td{vertical-align:top;border:1px solid #ccc;padding:4px;max-width:30em}</style>",
             "<h1>Perplexity-difference filter: documents nearest the threshold</h1>"]
    for dom, thr, total, dropped, below, above in sections:
        parts.append(f"<h2>{e(dom)}: threshold {thr}</h2><p>{total} scored, {dropped} dropped.</p>")
        for title, rs in (("Just kept", below), ("Just dropped", above)):
            parts.append(f"<h3>{title}</h3><table><tr><th>id</th><th>ratio</th><th>ppl(S2|S1)</th><th>ppl(S2)</th>"
                         "<th>end of S1</th><th>start of S2</th></tr>")
            for r in rs:
                parts.append(f"<tr><td>{e(r['id'])}</td><td>{r['ppl_ratio']:.4f}</td><td>{r['ppl_ctx']:.2f}</td>"
                             f"<td>{r['ppl_noctx']:.2f}</td><td>{e(_clip(r['s1_tail']))}</td><td>{e(_clip(r['s2_head']))}</td></tr>")
            parts.append("</table>")
    return "\n".join(parts) + "\n"


def summary(out_dir: str | Path, domain_key: str = "domain") -> dict[str, Any]:
    """Scored and dropped counts per domain of a finished run (for reports and the CLI)."""
    rows = _scored(Path(out_dir), domain_key)
    out: dict[str, Any] = {}
    for r in rows:
        s = out.setdefault(r["domain"], {"scored": 0, "dropped": 0})
        s["scored"] += 1
        s["dropped"] += r["verdict"] == "dropped"
    return json.loads(json.dumps(out))
