"""ilm.data: the pretraining-data pipeline (documents, readers/writers, executor, steps, ledger).

    from ilm.data import run_pipeline
    ledger = run_pipeline("recipes/data/internlm2.toml", ["corpus/"], "out/")
    ledger["kept_docs"], ledger["funnel"]

Heavy pieces (trafilatura, py3langid, scikit-learn, Ray) load only inside the steps that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ilm.data.document import Document

if TYPE_CHECKING:
    from ilm.data.base import Step

__all__ = ["Document", "run_pipeline", "write_demo_corpus"]


def run_pipeline(
    recipe_or_steps: str | Path | list[Step] | None,
    inputs: list[str | Path] | str | Path,
    out_dir: str | Path,
    workers: int | None = None,
    executor: str = "local",
    progress: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Run (or resume) a pipeline from a recipe file, a list of steps, or None (the InternLM2 defaults).

    Returns the ledger: input/kept/removed documents and bytes, and the funnel per step and reason.
    """
    from ilm.data.recipe import default_steps, load_recipe

    run: dict[str, Any] = {}
    if recipe_or_steps is None:
        steps = default_steps()
    elif isinstance(recipe_or_steps, (str, Path)):
        steps, run = load_recipe(recipe_or_steps)
    else:
        steps = list(recipe_or_steps)
    run.update(settings)
    run.pop("executor", None)
    if workers is not None:
        run["workers"] = workers
    run["progress"] = progress
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if executor == "ray":
        from ilm.data.ray_executor import RayExecutor

        return RayExecutor(**run).run(steps, list(inputs), out_dir)
    from ilm.data.executor import Executor

    return Executor(**run).run(steps, list(inputs), out_dir)


def write_demo_corpus(out_dir: str | Path, **kw: Any) -> tuple[list[Path], dict[str, Any]]:
    """The built-in demo corpus (real Python documentation text plus planted duplicates and junk)."""
    from ilm.data.corpus import write_demo_corpus as _w

    return _w(out_dir, **kw)
