"""Training checkpoints: everything needed to continue, written atomically, the last k kept.

A checkpoint is a directory `step-00000123/` holding `state.pt` (model, optimiser, schedule position, data
position, RNG states) and `meta.json`. It is written into a temporary sibling, fsynced, and renamed into
place; a crash or a full disk mid-write leaves the previous checkpoints untouched. Under FSDP the full
state is gathered to rank 0, which alone writes; loading broadcasts it back from rank 0.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

PREFIX = "step-"


class ResumeError(ValueError):
    """A checkpoint that cannot continue this run."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def gather_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimiser state dicts, on CPU, on rank 0 (empty elsewhere under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save(
    run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    extra: dict[str, Any], keep_last: int = 3,
) -> Path | None:
    """Write checkpoint `step` under `run_dir`; returns its path on rank 0."""
    model_state, optim_state = gather_state(model, optimizer)
    if not _is_rank0():
        return None
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=run_dir))
    try:
        state = {"step": step, "model": model_state, "optimizer": optim_state, "rng": rng_state(), **extra}
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        meta = {"step": step, "model_config": extra.get("model_config"), "stage": extra.get("stage")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.pt").exists())


def latest(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_config: dict) -> dict:
    """Restore model, optimiser and RNG from a checkpoint; returns the rest of its state (step, data, ...)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    path = Path(path)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False) if _is_rank0() else {}
    if _is_rank0():
        saved = state.get("model_config") or {}
        diff = {k: (saved.get(k), v) for k, v in model_config.items() if saved.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ResumeError(f"{path}: the model changed shape since this checkpoint ({detail}); "
                              "resume with the same model settings or start a new run directory")
    rest = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
    if dist.is_initialized():  # small things by pickle; tensors by broadcast inside set_state_dict
        box = [rest]
        dist.broadcast_object_list(box, src=0)
        rest = box[0]
    set_state_dict(
        model, optimizer,
        model_state_dict=state.get("model", {}), optim_state_dict=state.get("optimizer", {}),
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=dist.is_initialized()),
    )
    set_rng_state(rest["rng"])
    return rest
