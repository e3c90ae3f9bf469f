"""Repository samples: a repository's kept files, in dependency order, concatenated up to a token budget.

Each sample starts with the repository's manifests (requirements.txt, pyproject.toml, package.json, ...)
so the code is read next to its dependencies, then files in dependency order until the budget (32k tokens
for the long-context stage) is full. Two forms: `markdown` (a repository heading, then each file's
markdown block) and `path_comments` (each file preceded by one comment line naming its path, in the
file's own comment syntax). A file longer than a whole budget is cut at line boundaries into parts.

A sample's tier is the lowest tier among its code files and it carries that tier's epoch multiplier;
`_mixture.json` sums samples, tokens and epoch-weighted tokens per tier for pretraining to honour.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ilm.data.code.format import parse_markdown, to_markdown
from ilm.data.code.languages import is_config, path_comment
from ilm.data.document import Document
from ilm.data.io import ShardWriter, list_inputs, read_documents

TIER_RANK = {"high": 2, "medium": 1, "low": 0}
FORMATS = ("markdown", "path_comments")


def approx_tokens(text: str) -> int:
    """About 4 bytes per token for code with a cl100k-based vocabulary (pass a tokenizer for exact counts)."""
    return len(text.encode("utf-8", "surrogatepass")) // 4 + 1


def _piece(path: str, language: str, code: str, fmt: str) -> str:
    if fmt == "markdown":
        return to_markdown(path, language, code)
    return f"{path_comment(path, language)}\n{code}"


def split_lines(code: str, budget: int, count: Callable[[str], int]) -> list[str]:
    """Cut code at line boundaries into parts of at most ~budget tokens (a single huge line stays whole)."""
    parts, cur, n = [], [], 0
    for line in code.splitlines(keepends=True):
        k = count(line)
        if cur and n + k > budget:
            parts.append("".join(cur))
            cur, n = [], 0
        cur.append(line)
        n += k
    if cur:
        parts.append("".join(cur))
    return parts


def repository_samples(repo: str, files: list[Document], budget: int = 32768, fmt: str = "markdown",
                       count: Callable[[str], int] = approx_tokens, config_share: float = 0.25) -> Iterator[Document]:
    """Samples of one repository from its kept file documents (in the order given: dependency order)."""
    if fmt not in FORMATS:
        raise ValueError(f"sample format {fmt!r}; choose from {FORMATS}")
    entries = []
    for d in files:
        m = d.metadata
        path, lang = m.get("path", d.id), m.get("language", "")
        code = parse_markdown(d.text)[2] if m.get("format") == "markdown" else d.text
        entries.append((path, lang, code, m.get("tier", "medium"), float(m.get("epochs", 1.0)), d.id))
    head = f"# Repository: {repo}\n\n" if fmt == "markdown" else ""
    configs = [e for e in entries if is_config(e[0])]
    code_files = [e for e in entries if not is_config(e[0])]
    cfg_text, cfg_paths, overflow = "", [], []
    for e in configs if code_files else []:
        piece = _piece(e[0], e[1], e[2], fmt) + "\n"
        if count(cfg_text + piece) <= budget * config_share:
            cfg_text += piece
            cfg_paths.append(e[0])
        else:
            overflow.append(e)  # a manifest too big to lead every sample travels once, as a file
    code_files = overflow + code_files if code_files else configs
    prefix = head + cfg_text
    base = count(prefix)
    room = max(budget - base, budget // 2)
    samples: list[tuple[str, list[tuple[str, str, float, str]]]] = []
    text, members, used = prefix, [], base
    for path, lang, code, tier, epochs, fid in code_files:
        chunks = [code] if count(code) <= room else split_lines(code, room - 64, count)
        for k, chunk in enumerate(chunks):
            name = path if len(chunks) == 1 else f"{path} (part {k + 1}/{len(chunks)})"
            piece = _piece(name, lang, chunk if chunk.endswith("\n") else chunk + "\n", fmt) + "\n"
            n = count(piece)
            if members and used + n > budget:
                samples.append((text, members))
                text, members, used = prefix, [], base
            text += piece
            used += n
            members.append((fid, tier, epochs, path))
    if members:
        samples.append((text, members))
    for i, (text, members) in enumerate(samples):
        tier = min((m[1] for m in members), key=lambda t: TIER_RANK.get(t, 1))
        epochs = min(m[2] for m in members)
        yield Document(f"{repo}#sample-{i:04d}", text.rstrip("\n") + "\n", "code", None, {
            "repo": repo, "format": fmt, "tier": tier, "epochs": epochs, "tokens": count(text),
            "files": list(dict.fromkeys(m[3] for m in members)), "configs": cfg_paths,
        })


def write_samples(kept_dir: str | Path, out_dir: str | Path, budget: int = 32768, fmt: str = "markdown",
                  count: Callable[[str], int] = approx_tokens) -> dict[str, Any]:
    """Build samples from a finished code run's kept/ folder into out_dir (samples.jsonl.zst, _mixture.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    repos: dict[str, list[Document]] = {}
    for p in list_inputs([kept_dir]):
        for d in read_documents(p):
            repos.setdefault(str(d.metadata.get("repo", "")), []).append(d)
    writer = ShardWriter(out / "samples.jsonl.zst")
    mix: dict[str, dict[str, float]] = {}
    for repo, files in repos.items():
        files.sort(key=lambda d: d.metadata.get("dep_rank", 0))
        for s in repository_samples(repo, files, budget, fmt, count):
            writer.write(s)
            t = mix.setdefault(s.metadata["tier"], {"epochs": s.metadata["epochs"], "samples": 0, "tokens": 0, "epoch_tokens": 0.0})
            t["samples"] += 1
            t["tokens"] += s.metadata["tokens"]
            t["epoch_tokens"] += s.metadata["tokens"] * s.metadata["epochs"]
    writer.close()
    summary = {"budget_tokens": budget, "format": fmt, "repos": len(repos), "tiers": dict(sorted(mix.items())),
               "samples": sum(int(t["samples"]) for t in mix.values())}
    (out / "_mixture.json").write_text(json.dumps(summary, indent=1))
    return summary
