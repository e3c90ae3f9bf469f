"""`ilm report RUN_DIR`: one self-contained HTML page of a run's evidence (no network needed to view it).

    from ilm.report import build_report, machine_info
    path = build_report("runs/demo")            # -> runs/demo/report.html
    info = machine_info()                        # what report.json's "machine" holds

Layout: `html` (page skeleton, CSS, escaping), `figures` (matplotlib -> inline SVG from the run's numbers),
`sections` (one function per section; each reads its stage's files and says "not run" when they are missing).
"""

from __future__ import annotations

import datetime as _dt
import sys
import tempfile
import traceback
from pathlib import Path

from ilm.report.machine import machine_info

__all__ = ["build_report", "is_run_dir", "machine_info", "stage_of"]

# What marks a directory as a run: report.json or any stage's outputs.
RUN_MARKERS = ("report.json", "data/ledger.json", "code/ledger.json", "tokenizer/tokenizer.json",
               "pretrain/metrics.jsonl", "sft/metrics.jsonl", "rm/metrics.jsonl", "rlhf-rounds", "rlhf/rollouts",
               "eval/results.json", "eval/niah.json", "serve/transcripts.json")
NAV_LABELS = {"data": "Data", "code": "Code", "tokenizer": "Tokenizer", "pretrain": "Pretraining", "sft": "SFT",
              "rm": "Reward model", "rlhf": "RLHF", "eval": "Evaluation", "chats": "Chats", "recipes": "Recipes"}
TIMED = {"chats": "serve"}  # section id -> its stage in report.json's stage_seconds, where they differ


def is_run_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and any((Path(path) / m).exists() for m in RUN_MARKERS)


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of `run_dir` to `out` (default run_dir/report.html) and return its path.

    A section whose stage did not run says so; one that fails to render shows the error (and a warning goes
    to stderr) instead of taking the whole page down, so a half-written run still gets its report."""
    from ilm.report import sections

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(2, "No such file or directory", str(run_dir))
    if not is_run_dir(run_dir):
        stage = stage_of(run_dir)
        if stage is None:
            raise ValueError(f"{run_dir} is neither a run directory (no report.json and no stage outputs such as "
                             "data/ledger.json or pretrain/metrics.jsonl) nor one stage's run folder (no "
                             "metrics.jsonl, ledger.json, rollouts/, niah.json or results.json)")
        # one stage's folder (e.g. `ilm pretrain`'s run_dir): reported as that stage of a run holding only it
        with tempfile.TemporaryDirectory(prefix="ilm-report-") as tmp:
            (Path(tmp) / stage).symlink_to(run_dir.resolve(), target_is_directory=True)
            return _build(sections.Run(Path(tmp)), run_dir, Path(out) if out is not None else run_dir / "report.html")
    return _build(sections.Run(run_dir), run_dir, Path(out) if out is not None else run_dir / "report.html")


def stage_of(folder: Path) -> str | None:
    """Which stage wrote `folder` (its name inside a run directory), from the files it holds; None if none."""
    import json
    import tomllib

    f = Path(folder)
    if (f / "ledger.json").is_file():
        try:
            return "code" if "code" in json.loads((f / "ledger.json").read_text()) else "data"
        except (OSError, ValueError):
            return "data"
    if (f / "tokenizer.json").is_file() and not (f / "config.json").is_file():
        return "tokenizer"
    if (f / "niah.json").is_file() or (f / "results.json").is_file():
        return "eval"
    if (f / "transcripts.json").is_file():
        return "serve"
    if any(f.glob("round-*/ppo")):
        return "rlhf-rounds"
    if (f / "rollouts").is_dir():
        return "rlhf"
    if not (f / "metrics.jsonl").is_file():
        return None
    try:
        cfg = tomllib.loads((f / "config.toml").read_text()) if (f / "config.toml").is_file() else {}
    except (OSError, ValueError):
        cfg = {}
    if "sources" in cfg or "stages" in cfg:
        return "pretrain"
    if "reward_token" in cfg or "loss" in cfg:
        return "rm"
    if cfg:
        return "sft"
    head = (f / "metrics.jsonl").read_text(errors="replace")[:2000]
    return "rm" if '"pairs"' in head else "pretrain" if '"stage"' in head else "sft"


def _build(run, run_dir: Path, out: Path) -> Path:
    from ilm.report import html, sections

    status = sections.ran(run)
    parts = [sections.overview(run, status, machine_info)]
    nav = [("overview", "Overview", True)]
    for sid, builder in sections.SECTION_BUILDERS:
        try:
            part = builder(run)
        except Exception as err:  # noqa: BLE001 - one broken stage must not hide the others
            print(f"warning: report section {sid!r} failed: {type(err).__name__}: {err}", file=sys.stderr)
            part = html.section(sid, sid, html.join([html.p(f"This section failed to render: {type(err).__name__}: "
                                                               f"{err}", class_="notrun"),
                                                        html.details("traceback", html.pre(traceback.format_exc()))]),
                                status="error")
        secs = run.seconds(TIMED.get(sid, sid))
        if secs is not None:  # the stage's wall time beside its title
            part = html.Safe(part.replace("</h2>", f' <span class="badge time">{secs:.1f} s</span></h2>', 1))
        parts.append(part)
        nav.append((sid, NAV_LABELS.get(sid, sid), part.startswith(f'<section id="{sid}" data-status="ran"')))
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = html.page(f"ilm run report: {run_dir.resolve().name}",
                     f"{run_dir.resolve()} · built {when} by `ilm report`", nav, parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
