"""`ilm pretrain RECIPE.toml [--resume auto|never|DIR] [--section.key=value ...]` and
`ilm pretrain tokenize --tokenizer DIR --out DIR INPUT...` (documents -> token shards)."""

from __future__ import annotations

import argparse
import json
import sys


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Multi-stage pretraining from a TOML recipe (recipes/tiny.toml, recipes/internlm2-7b.toml, ...).\n"
        "  ilm pretrain RECIPE.toml [--resume auto|never|CHECKPOINT] [--train.max_steps=10 ...]\n"
        "  ilm pretrain tokenize --tokenizer DIR --out DIR INPUT [INPUT ...]\n"
        "Launch on several processes with torchrun: torchrun --nproc_per_node 8 -m ilm.cli pretrain RECIPE.toml"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("target", help="a recipe TOML file, or `tokenize`")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="options (see above)")
    parser.set_defaults(func=_dispatch)


def _dispatch(args: argparse.Namespace) -> int:
    if args.target == "tokenize":
        return _tokenize(args.rest)
    return _run(args.target, args.rest)


def _run(recipe: str, rest: list[str]) -> int:
    from ilm.train.pretrain import PretrainConfig, train
    from ilm.train.run import run_recipe_cli

    return run_recipe_cli("ilm pretrain RECIPE.toml", PretrainConfig, train, recipe, rest)


def _tokenize(rest: list[str]) -> int:
    from ilm.data.shards import ShardError, tokenize_to_shards

    p = argparse.ArgumentParser(prog="ilm pretrain tokenize")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (ilm tokenizer build)")
    p.add_argument("--out", required=True, help="token shard directory to write (resumable)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("inputs", nargs="+", help="jsonl / jsonl.gz / jsonl.zst / parquet files, .txt / .md (one document "
                   "per file), or directories (the folder `ilm data run -o` writes: its kept documents)")
    a = p.parse_args(rest)
    try:
        report = tokenize_to_shards(a.inputs, a.tokenizer, a.out, workers=a.workers)
    except ShardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report.pop("reports", None)
    print(json.dumps(report, indent=2))
    return 0
