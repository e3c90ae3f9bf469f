"""`ilm data report OUT_DIR`: the funnel as a table (documents and bytes into each step, removed per
reason) and as a PNG bar chart, both read from ledger.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def funnel_table(ledger: dict[str, Any]) -> str:
    """A fixed-width table, one row per step, then the balance line (kept + removed = input)."""
    lines = [f"{'step':<20} {'docs in':>10} {'MB in':>9} {'removed':>9} {'MB rm':>8}  reasons"]
    for r in ledger["funnel"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1]))
        lines.append(f"{r['step']:<20} {r['docs_in']:>10,} {_mb(r['bytes_in']):>9} {r['removed_docs']:>9,} {_mb(r['removed_bytes']):>8}  {reasons}")
    lines.append(f"{'kept':<20} {ledger['kept_docs']:>10,} {_mb(ledger['kept_bytes']):>9}")
    ok = "OK" if ledger["balanced"] else "MISMATCH"
    lines.append(f"input {ledger['input_docs']:,} = kept {ledger['kept_docs']:,} + removed {ledger['removed_docs']:,}  [{ok}]")
    if ledger.get("counters"):
        lines.append("counters: " + ", ".join(f"{k} {v}" for k, v in ledger["counters"].items()))
    for name, stats in (ledger.get("global") or {}).items():  # reduce results: clusters, pairs, capped buckets
        lines.append(f"{name}: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in stats.items()))
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    """A byte count in the largest unit that keeps it >= 1 (decimal units, as disks and `du --si` count)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def funnel_png(ledger: dict[str, Any], path: str | Path, title: str = "ilm data funnel") -> Path:
    """Horizontal bars: documents entering each step (and kept at the end), bytes on a twin panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = funnel_figure(plt, ledger, title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def funnel_figure(plt, ledger: dict[str, Any], title: str):
    """The funnel figure; byte labels and the byte axis in readable units (B .. TB) whatever the size."""
    from matplotlib.ticker import FuncFormatter

    rows = ledger["funnel"]
    names = [r["step"] for r in rows] + ["kept"]
    docs = [r["docs_in"] for r in rows] + [ledger["kept_docs"]]
    size = [r["bytes_in"] for r in rows] + [ledger["kept_bytes"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.5), sharey=True)
    y = list(range(len(names)))[::-1]
    for ax, vals, label, color, fmt in ((axes[0], docs, "documents entering the step", "#3b6ea8", lambda v: f"{v:,.0f}"),
                                        (axes[1], size, "bytes entering the step", "#d9822b", human_bytes)):
        ax.barh(y, vals, color=color)
        top = max(vals) or 1
        for yi, v in zip(y, vals):
            ax.text(v + top * 0.01, yi, fmt(v), va="center", fontsize=8)
        ax.set_xlabel(label)
        ax.set_xlim(0, top * 1.25)
    axes[1].xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: human_bytes(v)))
    axes[0].set_yticks(y, names)
    axes[0].set_ylabel("pipeline step")
    fig.suptitle(f"{title}: {ledger['input_docs']:,} in -> {ledger['kept_docs']:,} kept "
                 f"({human_bytes(ledger['kept_bytes'])} of {human_bytes(size[0] if rows else ledger['kept_bytes'])})")
    fig.tight_layout()
    return fig


def report(out_dir: str | Path, png: str | Path | None = None) -> tuple[str, Path]:
    """Print-ready table and the PNG path (default OUT_DIR/funnel.png)."""
    out = Path(out_dir)
    if not (out / "ledger.json").is_file():
        raise FileNotFoundError(f"{out}: no ledger.json; is this the output folder of a finished `ilm data run`?")
    ledger = json.loads((out / "ledger.json").read_text())
    return funnel_table(ledger), funnel_png(ledger, png or out / "funnel.png", f"{out.resolve().name}: data funnel")
