"""`ilm data <verb>`: run, report, train-classifier, make-corpus, bands, code*, longtext-report."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from ilm.data import run_pipeline
    from ilm.data.executor import PipelineError
    from ilm.data.recipe import load_recipe
    from ilm.data.report import funnel_table

    _, run = load_recipe(args.recipe)
    settings = {k: v for k, v in run.items() if k != "executor"}
    if args.workers is not None:
        settings["workers"] = args.workers
    if args.format:
        settings["output_format"] = args.format
    if args.on_invalid_utf8:
        settings["on_invalid_utf8"] = args.on_invalid_utf8
    executor = args.executor or run.get("executor", "local")
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None  # as Ctrl-C
    try:
        ledger = run_pipeline(args.recipe, args.input, args.output, executor=executor,
                              progress=not args.quiet, **settings)
    except PipelineError as exc:
        print(f"ilm data run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        done = len(list(Path(args.output).glob("markers/s*/shard-*.json")))
        print(f"ilm data run: interrupted; {done} finished shard pass(es) stay marked in {Path(args.output) / 'markers'} "
              "and are skipped when the same command is run again", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(funnel_table(ledger))
    print(f"kept: {Path(args.output) / 'kept'}   removed: {Path(args.output) / 'removed'}   ledger: {Path(args.output) / 'ledger.json'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ilm.data.report import report

    table, png = report(args.output, args.png)
    print(table)
    print(f"funnel chart: {png}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from ilm.data.classifier import read_labelled_csv, train

    labels = args.labels.split(",") if args.labels else None
    texts, y, labels = read_labelled_csv(args.csv, args.text_column, labels)
    t0 = time.perf_counter()
    n_val = int(len(texts) * args.val_fraction)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))
    val, tr = order[:n_val], order[n_val:]
    model = train([texts[i] for i in tr], y[tr], labels, n_features=1 << args.hash_bits, epochs=args.epochs)
    model.save(args.out)
    print(f"trained on {len(tr):,} rows, labels {labels}, in {time.perf_counter() - t0:.1f}s -> {args.out}")
    if n_val:
        from sklearn.metrics import roc_auc_score

        p = model.predict_proba([texts[i] for i in val])
        for j, lab in enumerate(labels):
            yy = y[val, j]
            auc = roc_auc_score(yy, p[:, j]) if 0 < yy.sum() < len(yy) else float("nan")
            print(f"  {lab:<14} validation AUC {auc:.3f}  (positives {int(yy.sum())}/{len(yy)})")
    return 0


def _make_corpus(args: argparse.Namespace) -> int:
    from ilm.data.corpus import write_demo_corpus

    paths, plan = write_demo_corpus(args.output, n_shards=args.shards, n_real=args.docs)
    print(f"wrote {len(paths)} shards to {args.output}: {plan}")
    return 0


def _bands(args: argparse.Namespace) -> int:
    from ilm.data.minhash import candidate_probability, optimal_bands

    b, r = optimal_bands(args.threshold, args.num_perm)
    print(f"threshold {args.threshold}, {args.num_perm} hashes -> {b} bands x {r} rows")
    for j in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9):
        print(f"  P(candidate | J={j:.1f}) = {float(candidate_probability(j, b, r)):.4f}")
    return 0


def _longtext_report(args: argparse.Namespace) -> int:
    from ilm.data.longtext import boundary_report, summary

    path = boundary_report(args.output, args.out, n=args.n, fmt=args.format)
    print(f"per domain: {summary(args.output)}")
    print(f"boundary report: {path}")
    return 0


def _longctx(args: argparse.Namespace) -> int:
    from ilm.data import longctx

    if not args.repos and not args.documents:
        raise ValueError("give --repos and/or --documents")
    count = longctx.approx_tokens
    if args.tokenizer:
        from ilm.tokenizer import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
        count = lambda s: len(tok.encode(s))
    samples, convs, report = longctx.build(args.repos, args.documents, args.window, count, args.seed)
    paths = longctx.write(args.out, samples, convs, report)
    print(f"{report['samples']} samples of <= {args.window:,} tokens (mean {report['mean']:,.0f}, max {report['max']:,}); "
          f"split files {report['split_files']}, split documents {report['split_documents']}")
    print(f"SFT conversations: {paths['sft']}; PPO queries: {paths['queries']}; report: {paths['report']}")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    p = sub.add_parser("run", help="run (or resume) a pipeline recipe over input files/folders")
    p.add_argument("recipe", help="recipe TOML, e.g. recipes/data/internlm2.toml")
    p.add_argument("--input", "-i", nargs="+", required=True, help="input files or folders (jsonl[.gz|.zst]: one {\"text\": ...} per line; parquet; warc; "
                   ".txt / .md: one document per file)")
    p.add_argument("--output", "-o", required=True, help="output folder (rerun with the same folder to resume)")
    p.add_argument("--workers", "-j", type=int, default=None)
    p.add_argument("--executor", choices=["local", "ray"], default=None)
    p.add_argument("--format", choices=["jsonl", "jsonl.gz", "jsonl.zst", "parquet"], default=None)
    p.add_argument("--on-invalid-utf8", choices=["replace", "quarantine"], default=None)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)

    p = sub.add_parser("report", help="print the funnel of a finished run and write funnel.png")
    p.add_argument("output", help="the run's output folder")
    p.add_argument("--png", default=None, help="chart path (default OUTPUT/funnel.png)")
    p.set_defaults(func=_report)

    p = sub.add_parser("train-classifier", help="train a hashed n-gram linear classifier (Kaggle Toxic Comment CSV format)")
    p.add_argument("csv", help="CSV with a text column and 0/1 label columns")
    p.add_argument("--out", "-o", required=True, help="model file (.npz)")
    p.add_argument("--text-column", default="comment_text")
    p.add_argument("--labels", default="", help="comma-separated label columns (default: the six Kaggle labels present)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--hash-bits", type=int, default=18)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.set_defaults(func=_train)

    p = sub.add_parser("make-corpus", help="write the built-in demo corpus (real Python docs text + planted cases)")
    p.add_argument("output")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--docs", type=int, default=400)
    p.set_defaults(func=_make_corpus)

    p = sub.add_parser("bands", help="bands x rows minimising false-positive + false-negative area")
    p.add_argument("--threshold", type=float, default=0.7)
    p.add_argument("--num-perm", type=int, default=128)
    p.set_defaults(func=_bands)

    p = sub.add_parser("longtext-report", help="documents nearest each perplexity-difference threshold (md/html)")
    p.add_argument("output", help="a finished run with the ppl_diff step")
    p.add_argument("--out", default=None, help="report path (default OUTPUT/ppl_boundary.md|html)")
    p.add_argument("--format", choices=["md", "html"], default="md")
    p.add_argument("-n", type=int, default=5, help="documents per side of each threshold")
    p.set_defaults(func=_longtext_report)

    p = sub.add_parser("longctx", help="long-context samples (repository files in dependency order, long documents) "
                                       "for SFT and PPO")
    p.add_argument("--repos", nargs="*", default=[], help="repository folders or code pipeline outputs")
    p.add_argument("--documents", nargs="*", default=[], help="long documents: text files, jsonl/parquet shards")
    p.add_argument("--window", type=int, default=32768, help="tokens per sample (default 32,768)")
    p.add_argument("--tokenizer", default=None, help="count tokens with this tokenizer (default ~4 bytes per token)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", "-o", required=True, help="folder for samples.jsonl, sft.jsonl, queries.jsonl, report.json")
    p.set_defaults(func=_longctx)

    from ilm.data.code.cli import register_code_verbs

    register_code_verbs(sub)
