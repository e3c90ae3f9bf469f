"""`ilm rm train RECIPE.toml [--resume ...] [--a.b=c ...]` and
`ilm rm score --model DIR INPUT.jsonl [--out OUT.jsonl]`: the conditional reward model."""

from __future__ import annotations

import argparse
import json
import sys


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = "The conditional reward model (COOL RLHF): train from a recipe, score conversations."
    verbs = parser.add_subparsers(dest="verb")
    t = verbs.add_parser("train", help="train from a TOML recipe (recipes/rm-tiny.toml, recipes/rm-internlm2-7b.toml)")
    t.add_argument("recipe")
    t.add_argument("rest", nargs=argparse.REMAINDER, help="--resume auto|never|DIR and --section.key=value overrides")
    t.set_defaults(func=_train)
    s = verbs.add_parser("score", help="score a jsonl of conversations ({\"messages\": [...], \"domain\": ...})")
    s.add_argument("--model", required=True, help="a reward model export (run_dir/final of `ilm rm train`)")
    s.add_argument("input", help="jsonl; the last message of each conversation is the response scored")
    s.add_argument("--out", help="jsonl to write (each input record plus \"reward\"); default: stdout")
    s.add_argument("--batch-tokens", type=int, default=16_384)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=_score)


def _train(args: argparse.Namespace) -> int:
    from ilm.train.reward import RMConfig, train
    from ilm.train.run import run_recipe_cli

    return run_recipe_cli("ilm rm train RECIPE.toml", RMConfig, train, args.recipe, args.rest)


def _score(args: argparse.Namespace) -> int:
    from ilm.tokenizer import load_tokenizer
    from ilm.train.reward import score
    from ilm.train.reward_model import load_reward_model
    from ilm.train.sft import read_jsonl

    try:
        model, meta = load_reward_model(args.model, device=args.device)
        tok = load_tokenizer(args.model)
        records = [obj for _, obj in read_jsonl([args.input])]
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    invalid = sum(isinstance(r, json.JSONDecodeError) for r in records)
    rewards, counts = score(model, tok, meta, [r if isinstance(r, dict) else {} for r in records],
                            args.batch_tokens, args.device)
    lines = [json.dumps({**(r if isinstance(r, dict) else {}), "reward": x}, ensure_ascii=False)
             for r, x in zip(records, rewards)]
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
    else:
        print("\n".join(lines))
    counts["bad_record"] -= invalid  # an unparsable line is counted once, as invalid_json
    print(json.dumps({**counts, "invalid_json": invalid}), file=sys.stderr)
    return 0
