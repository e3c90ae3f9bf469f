"""What a run shows and leaves behind: a progress bar (tokens/s, MFU, loss, ETA), metrics JSONL, TensorBoard
when installed, and a PNG of loss, learning rate and throughput beside the checkpoints."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

# Dense bf16 peak FLOP/s by device name fragment (vendor datasheets), for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12}


def peak_flops(device: torch.device, override: float | None = None) -> float | None:
    """Peak FLOP/s for MFU: a recipe override, a known GPU, or None (MFU is then not shown)."""
    if override:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_FLOPS.items():
            if key in name:
                return value
    return None


class Metrics:
    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self._tb = None
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.path = self.out_dir / "metrics.jsonl"
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except Exception:  # noqa: BLE001 - TensorBoard is optional
                self._tb = None

    def log(self, step: int, **values: Any) -> None:
        row = {"step": step, "time": time.time(), **values}
        self.rows.append(row)
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def plot(self, name: str = "training.png", stage: str = "training") -> Path | None:
        """Loss, learning rate and tokens/s against step (plus accuracy when the rows carry it), one panel each,
        titled with the run and the stage, stage boundaries marked and named."""
        if not self.enabled or not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plot_rows(plt, self.rows, f"{run_name(self.out_dir)}: {stage}")
        out = self.out_dir / name
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def run_name(run_dir: Path) -> str:
    """What a plot calls a run: the run directory's last two parts (`demo/pretrain`), enough to tell runs apart."""
    parts = Path(run_dir).resolve().parts
    return "/".join(parts[-2:])


# The reward model's loss adds lambda * the log barrier -(log(x + 5) + log(5 - x)), which is below zero for
# every |x| < ~4.9, so a well-trained RM's total loss is negative; the plot says so rather than look broken.
NEGATIVE_LOSS_NOTE = "loss = ranking + lambda * log barrier; the barrier is < 0 inside (-5, 5), so the loss can be negative"


def plot_rows(plt, rows: list[dict[str, Any]], title: str):
    """The figure behind `Metrics.plot` (split out so tests can inspect the matplotlib objects)."""
    train = [r for r in rows if "loss" in r]
    steps = [r["step"] for r in train]
    panels = [("loss", "train loss"), ("lr", "learning rate"), ("tokens_per_s", "tokens/s")]
    if any("accuracy" in r or "eval_accuracy" in r for r in rows):
        panels.append(("accuracy", "pair accuracy"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False)
    axes = list(axes[:, 0])
    for ax, (key, label) in zip(axes, panels):
        pts = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        ax.plot([a for a, _ in pts], [b for _, b in pts], lw=1, label="train")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    held = {"loss": "eval_loss", "accuracy": "eval_accuracy"}
    for ax, (key, _) in zip(axes, panels):
        evals = [r for r in rows if held.get(key) in r]
        if evals:
            ax.plot([r["step"] for r in evals], [r[held[key]] for r in evals], "o-", label="held-out")
            ax.legend(fontsize=8)
    if any("penalty" in r for r in train):
        axes[0].axhline(0, color="black", lw=0.6)
        axes[0].set_title(NEGATIVE_LOSS_NOTE, fontsize=8)
    prev = None
    for r in train:
        if r.get("stage") is not None and r.get("stage") != prev:
            for ax in axes:
                if prev is not None:
                    ax.axvline(r["step"], color="grey", ls="--", lw=0.8)
            axes[-1].annotate(str(r["stage"]), (r["step"], 0), xycoords=("data", "axes fraction"),
                              xytext=(2, 2), textcoords="offset points", fontsize=7, color="grey")
        prev = r.get("stage")
    if steps:
        span = max(steps) - min(steps)
        axes[-1].set_xlim(min(steps) - 0.5, max(steps) + 0.5 + 0.06 * span)  # room for the last stage's name
    axes[-1].set_xlabel("optimizer step")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
