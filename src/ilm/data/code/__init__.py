"""ilm.data.code: the code pipeline (docs/recipe.md, Pretraining data, code).

    from ilm.data.code import run_code_pipeline
    ledger = run_code_pipeline(["site-packages/pip", "repo.tar.gz", "files.jsonl"], "out/code")
    ledger["kept_docs"], ledger["funnel"], ledger["code"]["samples"]

Stages: repositories -> one document per file (`repo.ingest`, skips recorded with a reason) -> the
executor runs the steps (input check and normalisation, quality rules, indentation-blind MinHash dedup,
the model scorer where trusted, tiers, dependency order, markdown) with its ledger and resume markers ->
repository samples up to a token budget with per-tier epoch multipliers (`samples.write_samples`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ilm.data.base import Step

__all__ = ["code_step_types", "default_code_steps", "run_code_pipeline"]


def code_step_types() -> list[type]:
    """Step classes of the code pipeline, for the recipe registry."""
    from ilm.data.code.dedup import CodeMinHashDedup
    from ilm.data.code.deps import DependencyOrder
    from ilm.data.code.format import CodeInput, CodeMarkdown
    from ilm.data.code.quality import CodeRules, CodeTier
    from ilm.data.code.scorer import CodeQualityScorer

    return [CodeInput, CodeRules, CodeMinHashDedup, CodeQualityScorer, CodeTier, DependencyOrder, CodeMarkdown]


def default_code_steps(model: str = "") -> list[Step]:
    """input -> rules -> dedup -> model scorer (if a model is given) -> tiers -> dependency order -> markdown."""
    from ilm.data.code.dedup import CodeMinHashDedup
    from ilm.data.code.deps import DependencyOrder
    from ilm.data.code.format import CodeInput, CodeMarkdown
    from ilm.data.code.quality import CodeRules, CodeTier
    from ilm.data.code.scorer import CodeQualityScorer

    return [CodeInput(), CodeRules(), CodeMinHashDedup(), CodeQualityScorer(model=model), CodeTier(),
            DependencyOrder(), CodeMarkdown()]


def run_code_pipeline(
    sources: list[str | Path] | str | Path,
    out_dir: str | Path,
    recipe: str | Path | list[Step] | None = None,
    workers: int = 1,
    sample_tokens: int = 32768,
    sample_format: str = "markdown",
    count_tokens: Callable[[str], int] | None = None,
    max_file_bytes: int = 1 << 20,
    progress: bool = False,
) -> dict[str, Any]:
    """Ingest repositories, run the code steps (resumable), write samples; returns the ledger with a
    `code` section (ingest summary, per-file tiers, sample mixture). Rerun with the same out_dir to resume."""
    import json

    from ilm.data import run_pipeline
    from ilm.data.code.repo import IngestConfig, ingest
    from ilm.data.code.samples import approx_tokens, write_samples

    out = Path(out_dir)
    if isinstance(sources, (str, Path)):
        sources = [sources]
    summary = ingest(list(sources), out / "input", IngestConfig(max_file_bytes=max_file_bytes))
    steps = default_code_steps() if recipe is None else recipe
    settings: dict[str, Any] = {"workers": workers}
    ledger = run_pipeline(steps, [Path(p) for p in summary["shards"]], out, progress=progress, **settings)
    mixture = write_samples(out / "kept", out / "samples", sample_tokens, sample_format, count_tokens or approx_tokens)
    tiers: dict[str, int] = {}
    from ilm.data.io import read_all

    for d in read_all(out / "kept"):
        t = d.metadata.get("tier", "untiered")
        tiers[t] = tiers.get(t, 0) + 1
    ledger["code"] = {"ingest": summary, "kept_tiers": dict(sorted(tiers.items())), "samples": mixture}
    (out / "ledger.json").write_text(json.dumps(ledger, indent=1, sort_keys=True))
    return ledger
