"""The report's evaluation section: the metric values of eval/results.json and the NIAH grids of eval/niah.json.

Both readers are tolerant of shape, because results.json comes from more than one writer:

  results.json  `ilm eval run` ({"results": [{"task", "metrics": {...}, "samples_n", ...}]}), lm-evaluation-harness
                ({"results": {"task": {"acc,none": .., "acc_stderr,none": ..}}, "n-samples", "n-shot"}), or a plain
                {"task": {"metric": value}} / [{"task": .., "metric": value}]
  niah.json     `ilm eval niah` ({"runs": {"dynamic": {"cells": [{"length", "depth", "hit", ...}]}}, "summary"}),
                a grid ({"lengths", "depths", "scores"}) or bare records with length/depth and a hit or score

A NIAH cell is scored by its hit flag (0 or 1; a mean over trials): never by the needle's own `value`.
The grid is an HTML table, each cell coloured on the 0-1 red-yellow-green scale, so the numbers stay text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from ilm.report.html import Safe, join, kv, num, p, pre, table, tag

# What each metric means, and which way is better; a metric not listed is shown as it is named.
METRICS = {
    "acc": "accuracy (higher is better)", "acc_norm": "accuracy, length-normalised (higher is better)",
    "exact_match": "exact match (higher is better)", "accuracy": "accuracy (higher is better)",
    "bits_per_byte": "bits per byte (lower is better)", "byte_perplexity": "byte perplexity (lower is better)",
    "word_perplexity": "word perplexity (lower is better)", "token_perplexity": "token perplexity (lower is better)",
    "perplexity": "perplexity (lower is better)", "loss": "loss in nats (lower is better)",
}
# Keys of a task's record that are bookkeeping, not scores.
NOT_METRICS = {"seconds", "samples_n", "n", "num_fewshot", "samples_per_s", "alias", "n_samples", "fewshot_seed",
               "batch_size", "max_length", "version", "trials", "seed"}
# Keys that name a NIAH cell's score, most specific first ("value" is the needle itself, never a score).
SCORE_KEYS = ("hit", "score", "accuracy", "correct", "exact", "retrieved")
LENGTH_KEYS = ("length", "context_length", "context", "tokens", "len")
DEPTH_KEYS = ("depth", "depth_percent", "position", "depth_pct")
# Per-cell keys that never split cells into separate grids.
CELL_KEYS = {"trial", "answer", "value", "prompt_tokens", "needle_token", "needle_depth", "prompt", "needle",
             "question", "seed"}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def metric_rows(res: Any) -> list[dict[str, Any]]:
    """One row per (task, metric): task, metric, value, stderr, n, shots, chance (None where unknown)."""
    n_samples = res.get("n-samples", {}) if isinstance(res, dict) else {}
    n_shot = res.get("n-shot", {}) if isinstance(res, dict) else {}
    if isinstance(res, dict) and isinstance(res.get("results"), (dict, list)):
        res = res["results"]
    records: list[tuple[str, dict[str, Any]]] = []
    if isinstance(res, dict):
        records = [(str(k), v if isinstance(v, dict) else {"value": v}) for k, v in res.items()]
    elif isinstance(res, list):
        records = [(str(r.get("task", r.get("name", r.get("dataset", f"task {i + 1}")))), r)
                   for i, r in enumerate(res) if isinstance(r, dict)]
    rows = []
    for task, rec in records:
        metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else rec
        ns = n_samples.get(task) if isinstance(n_samples, dict) else None
        n = rec.get("samples_n", rec.get("n", ns.get("effective") if isinstance(ns, dict) else None))
        shots = rec.get("num_fewshot", n_shot.get(task) if isinstance(n_shot, dict) else None)
        chance = _chance(rec.get("samples"))
        for key, value in metrics.items():
            name, _, _filter = str(key).partition(",")
            if name in NOT_METRICS or name.endswith("_stderr") or not (_is_num(value) or value == "N/A"):
                continue
            stderr = metrics.get(f"{name}_stderr,{_filter}" if _filter else f"{name}_stderr")
            rows.append({"task": task, "metric": name, "value": value, "stderr": stderr if _is_num(stderr) else None,
                         "n": n, "shots": shots,
                         "chance": chance if name in ("acc", "acc_norm", "accuracy") else None})
    return rows


def _chance(samples: Any) -> float | None:
    """A multiple-choice task's chance accuracy: the mean of 1/choices over its questions."""
    if not isinstance(samples, list):
        return None
    ks = [len(s["loglikelihoods"]) for s in samples if isinstance(s, dict) and isinstance(s.get("loglikelihoods"), list)
          and s["loglikelihoods"]]
    return sum(1 / k for k in ks) / len(ks) if ks else None


def results_table(res: Any) -> Safe:
    rows = metric_rows(res)
    if not rows:
        return pre(json.dumps(res, indent=2)[:4000])
    return table(["task", "metric", "what it measures", "value", "± stderr", "chance", "documents", "shots"],
                 [[r["task"], r["metric"], METRICS.get(r["metric"], "—"), _value(r["metric"], r["value"]),
                   num(r["stderr"], 2) if r["stderr"] is not None else "—",
                   f"{r['chance']:.1%}" if r["chance"] is not None else "—",
                   r["n"] if r["n"] is not None else "—", r["shots"] if r["shots"] is not None else "—"]
                  for r in rows])


def _value(metric: str, v: Any) -> str:
    if not _is_num(v):
        return str(v)
    if metric in ("acc", "acc_norm", "exact_match", "accuracy"):
        return f"{v:.1%}"
    return f"{v:,.1f}" if abs(v) >= 1000 else f"{v:.4g}"


# ----------------------------------------------------------------------------- NIAH


class Grid:
    """One NIAH grid: hit rate per (depth, length), None where a cell was not run."""

    def __init__(self, name: str, depths: list[Any], lengths: list[Any], cells: list[list[float | None]]):
        self.name, self.depths, self.lengths, self.cells = name, depths, lengths, cells

    def overall(self, keep: Callable[[Any], bool] = lambda n: True) -> float | None:
        vals = [v for row in self.cells for n, v in zip(self.lengths, row) if v is not None and keep(n)]
        return sum(vals) / len(vals) if vals else None


def _pick(rec: dict[str, Any], names: tuple[str, ...]) -> str | None:
    return next((k for k in names if k in rec), None)


def _score(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if _is_num(v) and not math.isnan(v):
        return float(v)
    return None


def _from_records(recs: list[dict[str, Any]], name: str) -> list[Grid]:
    if not recs:
        return []
    lk, dk, sk = _pick(recs[0], LENGTH_KEYS), _pick(recs[0], DEPTH_KEYS), _pick(recs[0], SCORE_KEYS)
    if not (lk and dk and sk):
        return []
    other = [k for k in recs[0] if k not in (lk, dk, sk) and k not in CELL_KEYS
             and not isinstance(recs[0][k], (dict, list, float))
             and 1 < len({json.dumps(r.get(k)) for r in recs}) <= 8]
    groups: dict[str, list[dict]] = {}
    for r in recs:
        groups.setdefault(", ".join(f"{k}={r.get(k)}" for k in other), []).append(r)
    grids = []
    for label, rs in groups.items():
        lengths, depths = sorted({r[lk] for r in rs}), sorted({r[dk] for r in rs})
        cells: dict[tuple, list[float]] = {}
        for r in rs:
            s = _score(r.get(sk))
            if s is not None:
                cells.setdefault((r[dk], r[lk]), []).append(s)
        grid = [[sum(cells[(d, n)]) / len(cells[(d, n)]) if cells.get((d, n)) else None for n in lengths]
                for d in depths]
        grids.append(Grid(" ".join(x for x in (name, label) if x), depths, lengths, grid))
    return grids


def niah_grids(data: Any, name: str = "") -> list[Grid]:
    """Every grid found in niah.json (see the module's docstring for the shapes read)."""
    if isinstance(data, list):
        if all(isinstance(x, dict) and "lengths" in x for x in data) and data:
            return [g for x in data for g in niah_grids(x, name)]
        return _from_records([r for r in data if isinstance(r, dict)], name)
    if not isinstance(data, dict):
        return []
    if isinstance(data.get("cells"), list):  # records carry the hit flags: they win over a stored grid
        grids = _from_records([r for r in data["cells"] if isinstance(r, dict)], name)
        if grids:
            return grids
    if isinstance(data.get("lengths"), list) and isinstance(data.get("scores"), list):
        depths = data.get("depths") or list(range(len(data["scores"])))
        return [Grid(str(data.get("name", name)), depths, data["lengths"],
                     [[_score(v) for v in row] for row in data["scores"]])]
    if isinstance(data.get("runs"), dict):
        return [g for k, v in data["runs"].items() for g in niah_grids(v, " ".join(x for x in (name, str(k)) if x))]
    for key in ("results", "cells", "grid", "records"):
        if isinstance(data.get(key), list):
            return niah_grids(data[key], name)
    grids = []
    for k, v in data.items():
        if k != "summary" and isinstance(v, (dict, list)):
            grids += niah_grids(v, " ".join(x for x in (name, str(k)) if x))
    return grids


def colour(v: float) -> str:
    """The 0-1 red-yellow-green colour of a hit rate (matplotlib's RdYlGn, as eval/niah.png draws it)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps["RdYlGn"](min(1.0, max(0.0, v))))


def grid_table(g: Grid, trained: int | None) -> Safe:
    """The grid as a table: depth rows, length columns, each cell its hit rate as a percentage on its colour;
    lengths past the trained window are marked in the header."""
    head = [tag("th", "depth \\ length")]
    for n in g.lengths:
        past = trained is not None and _is_num(n) and n > trained
        head.append(tag("th", f"{num(n)}{' (past the window)' if past else ''}", class_="past" if past else None))
    rows = []
    for d, row in zip(g.depths, g.cells):
        tds = [tag("th", num(d, 2) if _is_num(d) else d)]
        for v in row:
            if v is None:
                tds.append(tag("td", "not run", class_="niah", data_value=""))
            else:
                fg = "#fff" if v < 0.2 or v > 0.8 else "#1d2330"
                tds.append(tag("td", f"{v:.0%}", class_="niah", data_value=f"{v:g}",
                               style=f"background:{colour(v)};color:{fg}"))
        rows.append(tag("tr", join(tds)))
    body = Safe(f"<thead><tr>{join(head)}</tr></thead><tbody>{join(rows)}</tbody>")
    title = f"NIAH hit rate{': ' + g.name if g.name else ''}"
    return tag("figure", join([tag("table", body, class_="niah", data_grid=g.name),
                               tag("figcaption", f"{title}. Each cell: the share of trials whose answer held the "
                                                 "needle's value (0% red, 100% green).")]))


def niah_summary(grids: list[Grid], trained: int | None) -> Safe:
    """Per grid: overall hit rate, and within / past the trained window where it is known."""
    def rate(v: float | None) -> str:
        return f"{v:.0%}" if v is not None else "—"

    rows = []
    for g in grids:
        within = g.overall(lambda n: _is_num(n) and n <= trained) if trained is not None else None
        past = g.overall(lambda n: _is_num(n) and n > trained) if trained is not None else None
        rows.append([g.name or "NIAH", rate(g.overall()), rate(within), rate(past)])
    window = f"{trained:,} tokens" if trained is not None else "not recorded"
    return join([p(f"Trained window (the model's max_position_embeddings): {window}."),
                 table(["setting", "overall", "within the trained window", "past the trained window"], rows)])


def trained_window(niah: Any) -> int | None:
    s = niah.get("summary") if isinstance(niah, dict) else None
    t = (s or {}).get("trained_length") if isinstance(s, dict) else None
    if t is None and isinstance(niah, dict):
        t = niah.get("trained_length")
    return int(t) if _is_num(t) else None


def niah_part(niah: Any) -> list[Safe]:
    grids = niah_grids(niah)
    if not grids:
        return []
    trained = trained_window(niah)
    return [niah_summary(grids, trained), tag("div", join(grid_table(g, trained) for g in grids), class_="grid")]


def scalars(niah: Any) -> Safe:
    if not isinstance(niah, dict):
        return Safe("")
    pairs = [(k, v) for k, v in niah.items() if isinstance(v, (int, float, str, bool)) and k != "checkpoint"]
    return kv(pairs) if pairs else Safe("")
