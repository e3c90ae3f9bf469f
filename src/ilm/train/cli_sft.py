"""`ilm sft RECIPE.toml [--resume auto|never|DIR] [--section.key=value ...]`: supervised fine-tuning."""

from __future__ import annotations

import argparse
import json
import sys


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


def split_options(prog: str, rest: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """--resume, then `--a.b=c` overrides; anything else is an error that shows the expected form."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--resume", default="auto", help="auto (latest checkpoint in run_dir), never, or a checkpoint dir")
    opts, overrides = p.parse_known_args(rest)
    bad = [o for o in overrides if not (o.startswith("--") and "=" in o)]
    if bad:
        p.error(f"unrecognised arguments {bad}; overrides look like --train.max_steps=10")
    return opts, overrides


def _run(args: argparse.Namespace) -> int:
    from ilm.config import RecipeError, load
    from ilm.train.sft import SFTConfig, train

    opts, overrides = split_options("ilm sft RECIPE.toml", args.rest)
    ok = False
    try:
        summary = train(load(SFTConfig, args.recipe, overrides), resume=opts.resume)
        ok = True
    except (RecipeError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:  # under torchrun: leave the process group before the interpreter exits
        from ilm.train.distributed import shutdown_world

        shutdown_world(barrier=ok)
    print(json.dumps(summary, indent=2, default=str))
    return 0
