"""`ilm data code`, `code-label-export`, `code-train-scorer`: the code pipeline and its labelling loop."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# what a user's mistake raises here (missing or unreadable files, bad recipes or labels): one line on stderr
_USER_ERRORS = (ValueError, OSError, KeyError)


def _fail(verb: str, exc: BaseException) -> int:
    """One line on stderr (stdout stays for results), exit status 1."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    print(f"ilm data {verb}: {msg}", file=sys.stderr)
    return 1


def _code(args: argparse.Namespace) -> int:
    from ilm.data.code import run_code_pipeline
    from ilm.data.executor import PipelineError
    from ilm.data.report import funnel_table

    count = None
    if args.tokenizer:
        from ilm.tokenizer import load_tokenizer

        try:
            tok = load_tokenizer(args.tokenizer)
        except _USER_ERRORS as exc:
            return _fail("code", exc)

        def count(text: str) -> int:
            return len(tok.encode(text))

    try:
        ledger = run_code_pipeline(args.input, args.output, recipe=args.recipe, workers=args.workers,
                                   sample_tokens=args.sample_tokens, sample_format=args.sample_format,
                                   count_tokens=count, max_file_bytes=args.max_file_bytes, progress=not args.quiet)
    except (PipelineError, *_USER_ERRORS) as exc:
        return _fail("code", exc)
    print(funnel_table(ledger))
    code = ledger["code"]
    print(f"kept files by tier: {code['kept_tiers']}")
    for tier, t in code["samples"]["tiers"].items():
        print(f"samples {tier:<6} x{t['epochs']:g} epochs: {t['samples']} samples, {t['tokens']:,} tokens")
    print(f"samples: {Path(args.output) / 'samples'}   ledger: {Path(args.output) / 'ledger.json'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ilm.data.code.scorer import CodeQualityModel, export_uncertain, read_labels
    from ilm.data.io import read_all

    try:
        model = CodeQualityModel.load(args.model)
        docs = read_all(args.input)
        done = {x.id for x in read_labels(args.exclude)} if args.exclude else set()
        n = export_uncertain(model, docs, args.n, args.out, exclude=done)
    except _USER_ERRORS as exc:
        return _fail("code-label-export", exc)
    print(f"wrote the {n} files the model is least sure about to {args.out}: fill `label` with 1 (good) or 0 (bad)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from ilm.data.code.scorer import read_labels, train_code_scorer

    try:
        items = read_labels(args.labels)
        model = train_code_scorer(items, holdout=args.holdout, min_agreement=args.min_agreement)
        model.save(args.out)
    except _USER_ERRORS as exc:
        return _fail("code-train-scorer", exc)
    print(f"trained on {model.info['train_files']} files, agreement measured on {model.info['holdout_files']} -> {args.out}")
    for lang, a in sorted(model.agreement.items()):
        used = "used" if model.trusted(lang) else "not used (rules only)"
        print(f"  {lang:<12} kappa {a['kappa']:.3f}  accuracy {a['accuracy']:.3f}  n={a['n']}  -> {used}")
    print(json.dumps({"trusted": sorted(k for k in model.agreement if model.trusted(k))}))
    return 0


def register_code_verbs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("code", help="code pipeline over repositories (folders, archives, jsonl of files)")
    p.add_argument("input", nargs="+", help="repository folders, .zip/.tar[.gz] archives, or jsonl with repo, path, text")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--recipe", default=None, help="steps (default: the built-in code steps = recipes/data/code.toml)")
    p.add_argument("--workers", "-j", type=int, default=1)
    p.add_argument("--sample-tokens", type=int, default=32768, help="token budget per repository sample")
    p.add_argument("--sample-format", choices=["markdown", "path_comments"], default="markdown")
    p.add_argument("--tokenizer", default="", help="count sample tokens with this tokenizer (default: ~4 bytes/token)")
    p.add_argument("--max-file-bytes", type=int, default=1 << 20)
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_code)

    p = sub.add_parser("code-label-export", help="export the files the code quality model is least sure about")
    p.add_argument("input", nargs="+", help="kept/ of a code run (or any code documents)")
    p.add_argument("--model", required=True)
    p.add_argument("-n", type=int, default=100)
    p.add_argument("--exclude", nargs="*", default=[], help="label files already done (their ids are skipped)")
    p.add_argument("--out", "-o", required=True)
    p.set_defaults(func=_export)

    p = sub.add_parser("code-train-scorer", help="train the code quality model; stores per-language agreement")
    p.add_argument("labels", nargs="+", help="labelled jsonl files (text, language, label)")
    p.add_argument("--out", "-o", required=True)
    p.add_argument("--holdout", type=float, default=0.3)
    p.add_argument("--min-agreement", type=float, default=0.6, help="Cohen's kappa a language needs to use the model")
    p.set_defaults(func=_train)
