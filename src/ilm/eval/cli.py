"""`ilm eval run|list|niah`: evaluate a checkpoint on local tasks; list the shipped tasks; Needle in a
Haystack (its own module, registered when present)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("run", help="evaluate a checkpoint on tasks (shipped names, .yaml or .jsonl files)")
    p.add_argument("--checkpoint", required=True, help="HF checkpoint directory with its tokenizer")
    p.add_argument("--tasks", nargs="+", required=True, metavar="NAME|FILE",
                   help="shipped task names (see `ilm eval list`), lm-eval task YAML files, or jsonl files")
    p.add_argument("--num-fewshot", type=int, default=None, help="shots per question (default: the task's own)")
    p.add_argument("--fewshot-seed", type=int, default=1234, help="seed of the few-shot sampler (lm-eval's default)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N documents of each task")
    p.add_argument("--max-length", type=int, default=None,
                   help="scoring window in tokens (default: the model's max_position_embeddings, as lm-eval)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="write the results (with per-sample records) as JSON here")
    p.set_defaults(func=_run)
    p = sub.add_parser("list", help="the tasks that ship with ilm")
    p.set_defaults(func=_list)
    try:
        niah = importlib.import_module("ilm.eval.niah")
    except ModuleNotFoundError as err:
        if err.name != "ilm.eval.niah":
            raise
    else:
        niah.register(sub.add_parser("niah", help="Needle in a Haystack: retrieval over context lengths x depths"))


def _run(args: argparse.Namespace) -> int:
    from ilm.eval.runner import run, table
    from ilm.eval.tasks import load_task

    if args.limit is not None and args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    tasks = [load_task(t) for t in args.tasks]
    out = run(args.checkpoint, tasks, num_fewshot=args.num_fewshot, batch_size=args.batch_size, limit=args.limit,
              device=args.device, max_length=args.max_length, seed=args.fewshot_seed)
    print(table(out["results"]))
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        print(f"results: {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from ilm.eval.tasks import load_task, shipped

    for name, path in shipped().items():
        t = load_task(str(path))
        print(f"{name:<18} {t.kind:<22} {len(t.eval_docs()):>4} docs  opencompass: {t.opencompass:<24} {path}")
    return 0
