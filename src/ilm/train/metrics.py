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

    def plot(self, name: str = "training.png") -> Path | None:
        """Loss, learning rate and tokens/s against step, one panel each, stage boundaries marked."""
        if not self.enabled or not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.rows if "loss" in r]
        steps = [r["step"] for r in rows]
        fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
        for ax, key, label in zip(axes, ("loss", "lr", "tokens_per_s"), ("train loss", "learning rate", "tokens/s")):
            ax.plot(steps, [r.get(key) for r in rows], lw=1)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        evals = [r for r in self.rows if "eval_loss" in r]
        if evals:
            axes[0].plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="held-out")
            axes[0].legend()
        prev = None
        for r in rows:
            if prev is not None and r.get("stage") != prev:
                for ax in axes:
                    ax.axvline(r["step"], color="grey", ls="--", lw=0.8)
            prev = r.get("stage")
        axes[-1].set_xlabel("optimizer step")
        fig.tight_layout()
        out = self.out_dir / name
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
