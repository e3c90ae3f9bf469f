"""A run directory as the report reads it (`Run`: its files, stages and recipes, each optional), the report's
sections in page order (`STAGES`), and the line under each section's title naming the model it is about."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ilm.report.html import Safe, join, p, tag

# (stage key in report.json, section id, title); the page shows them in this order.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("data", "data", "Data: funnel, removal reasons, dedup"),
    ("code", "code", "Code: tiers and a dependency-ordered sample"),
    ("tokenizer", "tokenizer", "Tokenizer: compression against cl100k"),
    ("pretrain", "pretrain", "Pretraining: loss per stage"),
    ("sft", "sft", "SFT: loss"),
    ("rm", "rm", "Reward model: accuracy per domain, reward histograms"),
    ("rlhf", "rlhf", "Online RLHF: PPO rounds and the fast path"),
    ("eval", "eval", "Evaluation: tasks and Needle in a Haystack"),
    ("serve", "chats", "Sample chats through the server"),
)


class Run:
    """A run directory and readers that return None for what is missing or unreadable."""

    def __init__(self, path: Path):
        self.path = path
        self.report: dict[str, Any] = self.json("report.json") or {}

    def file(self, rel: str) -> Path | None:
        f = self.path / rel
        return f if f.exists() else None

    def json(self, rel: str) -> Any:
        f = self.path / rel
        try:
            return json.loads(f.read_text()) if f.is_file() else None
        except (OSError, ValueError):
            return None

    def jsonl(self, rel: str | Path) -> list[dict[str, Any]]:
        f = self.path / rel
        rows = []
        if f.is_file():
            for line in f.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
        return rows

    def toml(self, rel: str) -> dict[str, Any]:
        import tomllib

        f = self.path / rel
        try:
            return tomllib.loads(f.read_text()) if f.is_file() else {}
        except (OSError, ValueError):
            return {}

    def short(self, path: Any) -> str:
        """A path as the page shows it: relative to the run when inside it (as `RUN/...`), else relative to the
        working directory, else its last three parts, so no absolute path widens the page."""
        text = str(path)
        target = Path(text)
        full = target if target.is_absolute() else Path.cwd() / target
        for base, prefix in ((self.path.resolve(), "RUN/"), (Path.cwd().resolve(), "")):
            try:
                return prefix + str(full.resolve().relative_to(base))
            except (ValueError, OSError):
                continue
        parts = target.parts
        return text if len(parts) <= 4 else "…/" + "/".join(parts[-3:])

    def stage(self, name: str) -> dict[str, Any]:
        return self.report.get(name) if isinstance(self.report.get(name), dict) else {}

    def seconds(self, name: str) -> float | None:
        s = (self.report.get("stage_seconds") or {}).get(name, self.stage(name).get("seconds"))
        return float(s) if isinstance(s, (int, float)) else None


def _model_line(run: Run, label: str, path: Any, note: str = "", text: str | None = None) -> Safe:
    """"Model ...: PATH" under a section's title, so every section says which model its numbers are about."""
    shown = text or (run.short(path) if path else "not recorded by the run")
    return p(join([tag("strong", f"{label}: "), tag("code", shown), note]), class_="model")
