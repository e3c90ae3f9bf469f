"""Figures drawn from a run's raw numbers with matplotlib and embedded in the page as inline SVG.

Text in the SVGs stays text (svg.fonttype "none", drawn in the page's own fonts), and each figure gets its
own id salt so the ids of two figures on one page never collide.
"""

from __future__ import annotations

import base64
import io
import itertools
from pathlib import Path
from typing import Any

from ilm.report.html import Safe, esc

_SALT = itertools.count()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def svg(fig, label: str) -> Safe:
    """The figure as an inline <svg> element (no XML prolog), labelled for screen readers."""
    plt = _plt()
    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": f"ilm-report-{next(_SALT)}"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    return Safe(text.replace("<svg ", f'<svg role="img" aria-label="{esc(label)}" ', 1))


def png_file(path: Path, label: str) -> Safe:
    """A PNG the run wrote, base64-embedded: used only where the numbers behind it were not kept."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return Safe(f'<img alt="{esc(label)}" src="data:image/png;base64,{data}">')


def funnel(steps: list[dict[str, Any]], title: str) -> Safe:
    """Documents entering each pipeline step, with the ones it removed stacked on the right."""
    plt = _plt()
    names = [s["step"] for s in steps]
    kept = [s["docs_in"] - s["removed_docs"] for s in steps]
    removed = [s["removed_docs"] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(steps) + 1.0))
    ys = range(len(steps))[::-1]
    ax.barh(ys, kept, color="#4c8bd6", label="passed")
    ax.barh(ys, removed, left=kept, color="#e07b54", label="removed")
    for y, k, r in zip(ys, kept, removed):
        if r:
            ax.text(k + r, y, f" -{r}", va="center", fontsize=8)
    ax.set_yticks(list(ys), names)
    ax.set_xlabel("documents")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0)
    return svg(fig, title)


def grouped_bars(groups: list[str], series: dict[str, list[float]], title: str, ylabel: str,
                 ylim: tuple[float, float] | None = None, fmt: str = "{:.2f}") -> Safe:
    """Bars per group, one colour per series, values written on top."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(groups) * max(1, len(series)) ** 0.5 + 2), 3.0))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=7.5, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0)
    return svg(fig, title)


def training_curves(rows: list[dict[str, Any]], title: str, panels: list[tuple[str, str, str | None]]) -> Safe:
    """Metrics against step, one panel per (train key, label, held-out key); held-out values as dots; where
    the rows carry a "stage", each stage change is a dashed line named after the stage that starts."""
    plt = _plt()
    panels = [pn for pn in panels if any(r.get(pn[0]) is not None or (pn[2] and r.get(pn[2]) is not None)
                                         for r in rows)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.3 * len(panels) + 0.4), sharex=True, squeeze=False)
    axes = list(axes[:, 0])
    starts = [(r["step"], r["stage"]) for i, r in enumerate(rows)
              if r.get("stage") is not None and (i == 0 or rows[i - 1].get("stage") != r["stage"])]
    for ax, (key, label, held) in zip(axes, panels):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts), lw=1, label="train")
        hp = [(r["step"], r[held]) for r in rows if held and isinstance(r.get(held), (int, float))]
        if hp:
            ax.plot(*zip(*hp), "o-", ms=4, lw=1, color="#d6502c", label="held out")
            ax.legend(fontsize=8, loc="upper right")
        ax.set_ylabel(label)
        for i, (step, name) in enumerate(starts):
            if i:
                ax.axvline(step, color="grey", ls="--", lw=0.8)
            if ax is axes[0]:  # above the panel, where no curve or legend can hide it
                ax.annotate(name, (step, 1.0), xycoords=("data", "axes fraction"), fontsize=8, va="bottom",
                            xytext=(2, 2), textcoords="offset points", color="#444")
    axes[-1].set_xlabel("step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return svg(fig, title)


def rounds_curves(curves: list[dict[str, Any]], title: str) -> Safe:
    """Per PPO update of every round, one after another: RM score, true reward (where known), loophole rate
    and KL; a dashed line where each round after the first starts."""
    plt = _plt()
    keys = [("rm_score", "RM score"), ("true_reward", "true reward"), ("loophole_rate", "loophole rate"),
            ("kl", "KL")]
    keys = [k for k in keys if any(u.get(k[0]) is not None for c in curves for u in c["per_update"])]
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 1.9 * len(keys) + 0.5), sharex=True, squeeze=False)
    axes = list(axes[:, 0])
    offset = 0
    for i, c in enumerate(curves):
        xs = [offset + u["update"] for u in c["per_update"]]
        for ax, (k, label) in zip(axes, keys):
            ax.plot(xs, [u.get(k) for u in c["per_update"]], lw=1.2, marker=".", ms=3, label=f"round {c['round']}")
            ax.set_ylabel(label)
            if i and xs:
                ax.axvline(offset + 0.5, color="grey", ls="--", lw=0.8)
        offset = xs[-1] if xs else offset
    axes[0].legend(fontsize=8, ncol=len(curves))
    axes[-1].set_xlabel("PPO update (rounds one after another)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return svg(fig, title)


def heatmap(grid: list[list[float | None]], rows: list[Any], cols: list[Any], title: str, xlabel: str,
            ylabel: str) -> Safe:
    """A score grid (rows x cols, values in [0, 1]) with each cell's value written in it."""
    plt = _plt()
    import numpy as np

    data = np.array([[np.nan if v is None else float(v) for v in row] for row in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 2.4, 0.5 * len(rows) + 1.4))
    im = ax.imshow(data, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(False)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.05, label="score")
    ax.set_title(title)
    return svg(fig, title)
