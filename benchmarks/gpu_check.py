"""One prepared GPU check: every CUDA path of ilm exercised and measured, in order of value, in < 8 minutes.

    python -m benchmarks.gpu_check --out DIR          # on the device (make gpu-check)
    python -m benchmarks.gpu_check --out DIR --dry-run  # every part on CPU with tiny shapes, in seconds

GPU time comes rarely and in short windows, so nothing is written on the device: this script needs only the
repository and the device's own torch (random weights, a tokenizer trained on Python's standard library, no
downloads). Each part has its own time budget (a part past it is stopped and reported as "timeout", and the
next part runs); a part whose optional library is missing on the device (transformers, flash-attn, uvicorn)
says so in one line and is skipped. DIR/gpu_check.json gets the machine, the torch/CUDA versions and each
part's figures and status (pass / fail / skip / timeout / error); a short table goes to stdout.

Parts (`benchmarks/gpu_parts_model.py`, `benchmarks/gpu_parts_system.py`):
1. cuda_paths    every CUDA attention/decode path against the CPU fp32 reference
2. bf16_decode   fp32 vs bf16 greedy decoding, ilm and transformers, top-2 margin at every first divergence
3. training      internlm2-1.8b at windows 4k and 32k: tokens/s, MFU, peak memory vs `ilm.model.memory`
4. ppo           two PPO updates in bf16 (ratio exactly 1 and KL ~0 at the first actor update)
5. serving       `ilm serve` with 1/8/32 concurrent clients; greedy equals `ilm generate`
6. niah_32k      NIAH at 32k on the 1.8B-shaped random model (time and memory only)
7. fsdp2         FSDP2 with 2 processes (NCCL; gloo in the dry run), or skipped with the reason
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# isort: off
import ilm  # noqa: F401 - before torch: it sets OMP_WAIT_POLICY (the CPU dry run on a busy machine)
import torch
# isort: on

# name -> (module:function, seconds on the GPU, optional libraries it needs)
PARTS: list[tuple[str, str, int, tuple[str, ...]]] = [
    ("cuda_paths", "gpu_parts_model:cuda_paths", 60, ()),
    ("bf16_decode", "gpu_parts_model:bf16_decode", 50, ()),
    ("training", "gpu_parts_model:training", 160, ()),
    ("ppo", "gpu_parts_system:ppo", 40, ()),
    ("serving", "gpu_parts_system:serving", 40, ("uvicorn", "starlette")),
    ("niah_32k", "gpu_parts_system:niah", 60, ()),
    ("fsdp2", "gpu_parts_system:fsdp2", 25, ()),
]  # 435 s of budgets: the whole check stays under 8 minutes with start-up
DRY_BUDGET_S = 120  # per part on CPU (a loaded 2-core machine); the dry run takes seconds when quiet
TOTAL_BUDGET_S = 460  # on the GPU: a part never starts with less than its budget left of this (8 minutes)


class PartTimeout(BaseException):
    """A part's budget is spent. Not an Exception: code under test that catches Exception must not swallow it."""


@dataclass
class Context:
    """What every part gets: the device, whether this is the dry run, a scratch dir, shared fixtures."""

    dry: bool
    device: torch.device
    tmp: Path
    out: Path
    deadline: float = 0.0  # time.monotonic() at which the part's budget ends
    partial: dict[str, Any] = field(default_factory=dict)  # figures a part has so far (kept on a timeout)
    cache: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """A fixture built by the first part that needs it (tokenizer, checkpoints), shared by the rest."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpus=torch.cuda.device_count(), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}")
        try:
            v = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as err:  # noqa: BLE001 - informational only
            info["nccl"] = f"unknown ({type(err).__name__})"
    for lib in ("transformers", "flash_attn", "triton"):
        try:
            info[lib] = importlib.import_module(lib).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is what this records
            info[lib] = None
    return info


def missing(modules: tuple[str, ...]) -> list[str]:
    out = []
    for m in modules:
        try:
            importlib.import_module(m)
        except Exception:  # noqa: BLE001 - any import failure means the part cannot run
            out.append(m)
    return out


def _alarm(signum, frame):
    raise PartTimeout()


def run_part(name: str, target: str, budget: float, needs: tuple[str, ...], ctx: Context) -> dict[str, Any]:
    """One part under its budget; never raises (a failed part must not cost the rest of a device run)."""
    lacking = missing(needs)
    if lacking:
        return {"status": "skip", "reason": f"not installed on this machine: {', '.join(lacking)}"}
    mod_name, fn_name = target.split(":")
    t0 = time.monotonic()
    ctx.deadline = t0 + budget
    ctx.partial = {}
    old = signal.signal(signal.SIGALRM, _alarm)
    # re-fires every second until disarmed: a raise that lands where Python drops exceptions (a finaliser,
    # a callback from C) is followed by another
    signal.setitimer(signal.ITIMER_REAL, budget, min(1.0, budget))
    try:
        try:
            fn = getattr(importlib.import_module(f"benchmarks.{mod_name}"), fn_name)
            result = fn(ctx)
        finally:  # disarmed first: an alarm after this point cannot escape run_part
            signal.setitimer(signal.ITIMER_REAL, 0)
    except ModuleNotFoundError as err:  # the device image lacks a library ilm imports for this part
        result = {"status": "skip", "reason": f"not installed on this machine: {err.name}", **ctx.partial}
    except PartTimeout:
        result = {"status": "timeout", "reason": f"stopped at its budget of {budget:.0f} s", **ctx.partial}
    except Exception as err:  # noqa: BLE001 - recorded with its traceback
        result = {"status": "error", "reason": f"{type(err).__name__}: {err}"[:500],
                  "traceback": traceback.format_exc()[-3000:], **ctx.partial}
    finally:
        signal.signal(signal.SIGALRM, old)
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    result.setdefault("status", "pass")
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["budget_s"] = round(budget)
    return result


def summary_line(result: dict[str, Any]) -> str:
    """The one-line figure of a part for the stdout table."""
    if result.get("reason"):
        return str(result["reason"])[:90]
    return str(result.get("headline", ""))[:90]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory for gpu_check.json")
    ap.add_argument("--dry-run", action="store_true", help="every part on CPU with tiny shapes (seconds)")
    ap.add_argument("--parts", default="", help="comma-separated part names (default: all, in order of value)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("no CUDA device: running the dry run (--dry-run) instead", file=sys.stderr)
    device = torch.device("cuda" if cuda else "cpu")
    wanted = [p for p in args.parts.split(",") if p]
    unknown = set(wanted) - {p[0] for p in PARTS}
    if unknown:
        print(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(p[0] for p in PARTS)}",
              file=sys.stderr)
        return 2
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references must be fp32
        torch.backends.cudnn.allow_tf32 = False
    report: dict[str, Any] = {"machine": machine(), "dry_run": not cuda, "device": str(device),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv),
                              "parts": {}}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ilm-gpu-check-") as tmp:
        ctx = Context(dry=not cuda, device=device, tmp=Path(tmp), out=out)
        for name, target, budget, needs in PARTS:
            if wanted and name not in wanted:
                continue
            left = TOTAL_BUDGET_S - (time.monotonic() - t_start)
            if cuda and left < budget:  # an earlier part overran (stuck in a kernel past its alarm)
                result = {"status": "skip", "reason": f"the check's {TOTAL_BUDGET_S} s are spent ({left:.0f} s left)",
                          "seconds": 0.0, "budget_s": budget}
            else:
                print(f"[gpu_check] {name} (budget {budget if cuda else DRY_BUDGET_S} s) ...", flush=True)
                result = run_part(name, target, budget if cuda else DRY_BUDGET_S, needs, ctx)
            report["parts"][name] = result
            print(f"[gpu_check] {name}: {result['status']} in {result['seconds']} s  {summary_line(result)}",
                  flush=True)
            (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["seconds"] = round(time.monotonic() - t_start, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\n{'part':<12} {'status':<8} {'s':>6}  figures")
    for name, r in report["parts"].items():
        print(f"{name:<12} {r['status']:<8} {r['seconds']:>6}  {summary_line(r)}")
    print(f"\n{report['device']} ({report['machine'].get('gpu', 'CPU')}), {report['seconds']} s in all; "
          f"raw results: {out / 'gpu_check.json'}")
    bad = [n for n, r in report["parts"].items() if r["status"] in ("fail", "error", "timeout")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
