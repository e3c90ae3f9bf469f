"""`make bench`: run every `benchmarks/bench_*.py` (or those named on the command line), one after another.

Each benchmark module has `main() -> dict` that measures ours and the library a user would pick side by
side in one run, prints a table and returns its numbers; this runner collects them into
`benchmarks/results.json` with the machine they came from.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path


def machine() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    here = Path(__file__).parent
    if not names:
        names = sorted(p.stem for p in here.glob("bench_*.py"))
    results = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "benchmarks": {}}
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        results["benchmarks"][name] = module.main()
    out = Path(os.environ.get("ILM_BENCH_OUT", here / "results.json"))
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
