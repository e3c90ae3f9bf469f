"""`ilm report RUN_DIR [--out FILE]`: write the run's HTML report (default RUN_DIR/report.html), print its path."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (e.g. runs/demo; stages that did not run show as not run) "
                        "or one stage's run folder (e.g. runs/demo/pretrain)")
    parser.add_argument("--out", default=None, help="the HTML file to write (default RUN_DIR/report.html)")
    parser.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from ilm.report import build_report

    print(build_report(args.run_dir, args.out))
    return 0
