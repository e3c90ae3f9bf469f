"""`ilm data run RECIPE.toml`: a TOML file lists the steps and their parameters.

    [run]                       # executor settings (all optional; CLI flags override)
    workers = 2
    output_format = "jsonl.zst" # jsonl | jsonl.gz | jsonl.zst | parquet
    on_invalid_utf8 = "replace" # or "quarantine"

    [[steps]]
    type = "minhash_dedup"      # see STEP_TYPES
    threshold = 0.7             # any field of the step's dataclass; unknown keys are an error
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from ilm.data.base import Step, Throttle
from ilm.data.classifier import ClassifierFilter, QualityClassifierFilter, ToxicityFilter
from ilm.data.code import code_step_types
from ilm.data.dedup import ExactDedup, MinHashDedup
from ilm.data.longtext import LongTextLength, LongTextStats, PerplexityDifference
from ilm.data.normalize import HtmlToText, LanguageFilter, Normalize
from ilm.data.quality import C4Filter, GopherQuality, GopherRepetition, LengthFilter
from ilm.data.safety import SensitiveWords, UrlBlocklist

STEP_TYPES: dict[str, type[Step]] = {
    cls.type: cls
    for cls in (
        HtmlToText, Normalize, LanguageFilter, GopherQuality, GopherRepetition, C4Filter, LengthFilter,
        ExactDedup, MinHashDedup, UrlBlocklist, SensitiveWords, ToxicityFilter, QualityClassifierFilter,
        ClassifierFilter, Throttle, *code_step_types(), LongTextLength, LongTextStats, PerplexityDifference,
    )
}
RUN_KEYS = {"workers", "output_format", "on_invalid_utf8", "keep_intermediate", "progress", "executor"}


def build_step(spec: dict[str, Any]) -> Step:
    """One step from its table; unknown types or keys raise ValueError naming the allowed ones."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in STEP_TYPES:
        raise ValueError(f"unknown step type {kind!r}; choose from: {', '.join(sorted(STEP_TYPES))}")
    cls = STEP_TYPES[kind]
    allowed = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(spec) - allowed)
    if bad:
        raise ValueError(f"step {kind!r}: unknown keys {bad}; allowed: {sorted(allowed)}")
    return cls(**spec)


def load_recipe(path: str | Path) -> tuple[list[Step], dict[str, Any]]:
    """(steps, run settings) from a recipe file."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    bad = sorted(set(data) - {"run", "steps", "name", "description"})
    if bad:
        raise ValueError(f"{path}: unknown top-level keys {bad}")
    run = dict(data.get("run", {}))
    bad = sorted(set(run) - RUN_KEYS)
    if bad:
        raise ValueError(f"{path}: unknown [run] keys {bad}; allowed: {sorted(RUN_KEYS)}")
    steps = [build_step(s) for s in data.get("steps", [])]
    if not steps:
        raise ValueError(f"{path}: no [[steps]]")
    return steps, run


def default_steps() -> list[Step]:
    """The InternLM2 general-text pipeline with its defaults (format -> rules -> dedup -> safety -> quality)."""
    return [
        HtmlToText(), Normalize(), LanguageFilter(), GopherQuality(), GopherRepetition(), C4Filter(),
        ExactDedup(), MinHashDedup(), UrlBlocklist(), SensitiveWords(), ToxicityFilter(),
    ]
