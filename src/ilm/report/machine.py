"""The machine a run ran on, in a few fields a person reads: a stage's time means little without it."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """Platform, CPU model, cores (all and usable), RAM, Python and torch versions, and the device torch
    would train on (the GPU's name when CUDA is available). JSON-serialisable; report.json keeps it."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
        "ram_gib": _ram_gib(), "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["device"] = f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
        else:
            info["device"] = f"cpu ({torch.get_num_threads()} torch threads)"
    except ImportError:
        info["torch"], info["device"] = None, "cpu"
    return info
