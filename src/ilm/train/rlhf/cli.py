"""`ilm rlhf ppo RECIPE.toml [--resume auto|never|DIR] [--section.key=value ...]`: online RLHF (PPO)."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = "Online RLHF (COOL RLHF): PPO steered by the conditional reward model."
    verbs = parser.add_subparsers(dest="verb")
    p = verbs.add_parser("ppo", help="PPO from a TOML recipe (recipes/rlhf-tiny.toml, recipes/rlhf-internlm2-7b.toml)",
                         description="Launch on several processes with torchrun: "
                                     "torchrun --nproc_per_node 8 -m ilm.cli rlhf ppo RECIPE.toml")
    p.add_argument("recipe")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="--resume auto|never|DIR and --section.key=value overrides")
    p.set_defaults(func=_ppo)


def _ppo(args: argparse.Namespace) -> int:
    from ilm.train.rlhf.ppo import PPOConfig, train
    from ilm.train.run import run_recipe_cli

    return run_recipe_cli("ilm rlhf ppo RECIPE.toml", PPOConfig, train, args.recipe, args.rest)
