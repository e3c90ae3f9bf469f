"""`ilm rlhf ppo RECIPE.toml [--resume auto|never|DIR] [--section.key=value ...]`: online RLHF (PPO);
`ilm rlhf run RECIPE.toml`: rounds of PPO with the fast and slow paths;
`ilm rlhf review export RUN_DIR --round K -o FILE` / `ilm rlhf review import RUN_DIR FILE`: a person as reviewer."""

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
    r = verbs.add_parser("run", help="rounds of PPO + fast path + slow path (recipes/rlhf-rounds-tiny.toml)")
    r.add_argument("recipe")
    r.add_argument("rest", nargs=argparse.REMAINDER, help="--resume auto|never and --section.key=value overrides")
    r.set_defaults(func=_run)
    rv = verbs.add_parser("review", help="a person as the fast path's reviewer: export suspects, import verdicts")
    rverbs = rv.add_subparsers(dest="review_verb")
    ex = rverbs.add_parser("export", help="a round's suspects as jsonl (fill in verdict: approve|reject, correction)")
    ex.add_argument("run_dir")
    ex.add_argument("--round", type=int, required=True)
    ex.add_argument("-o", "--out", required=True)
    ex.set_defaults(func=_review_export)
    im = rverbs.add_parser("import", help="verdicts for the round waiting on review (malformed lines named, counted)")
    im.add_argument("run_dir")
    im.add_argument("file")
    im.add_argument("--round", type=int, help="default: the round the run is waiting on")
    im.set_defaults(func=_review_import)


def _ppo(args: argparse.Namespace) -> int:
    from ilm.train.rlhf.ppo import PPOConfig, train
    from ilm.train.run import run_recipe_cli

    return run_recipe_cli("ilm rlhf ppo RECIPE.toml", PPOConfig, train, args.recipe, args.rest)


def _run(args: argparse.Namespace) -> int:
    from ilm.train.rlhf.rounds import RoundsConfig, run
    from ilm.train.run import run_recipe_cli

    return run_recipe_cli("ilm rlhf run RECIPE.toml", RoundsConfig, run, args.recipe, args.rest)


def _review_export(args: argparse.Namespace) -> int:
    import shutil
    import sys

    from ilm.train.rlhf.rounds import round_dir

    src = round_dir(args.run_dir, args.round) / "suspects.jsonl"
    if not src.exists():
        print(f"error: {src}: no suspects yet (the round has not reached its fast path)", file=sys.stderr)
        return 2
    shutil.copyfile(src, args.out)
    print(f"{sum(1 for x in src.read_text().splitlines() if x.strip())} suspects -> {args.out}")
    return 0


def _review_import(args: argparse.Namespace) -> int:
    import sys

    from ilm.train.rlhf.rounds import import_verdicts

    try:
        report = import_verdicts(args.run_dir, args.file, args.round)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for problem in report["problems"]:
        print(f"malformed: {problem}", file=sys.stderr)
    print(f"{report['used']} verdicts imported into {report['into']}; {report['malformed']} malformed line(s) skipped")
    return 0
