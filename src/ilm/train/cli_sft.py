"""`ilm sft RECIPE.toml [--resume auto|never|DIR] [--section.key=value ...]`: supervised fine-tuning."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Supervised fine-tuning on ChatML conversations (jsonl: {\"messages\": [...], \"tools\": [...]}) from a\n"
        "TOML recipe (recipes/sft-tiny.toml, recipes/sft-internlm2-7b.toml).\n"
        "  ilm sft RECIPE.toml [--resume auto|never|CHECKPOINT] [--train.max_steps=10 ...]\n"
        "Launch on several processes with torchrun: torchrun --nproc_per_node 8 -m ilm.cli sft RECIPE.toml"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("recipe", help="a recipe TOML file")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="--resume and --section.key=value overrides")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ilm.train.run import run_recipe_cli
    from ilm.train.sft import SFTConfig, train

    return run_recipe_cli("ilm sft RECIPE.toml", SFTConfig, train, args.recipe, args.rest)
