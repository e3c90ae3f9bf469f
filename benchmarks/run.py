"""`make bench`: run every `benchmarks/bench_*.py` (or those named on the command line), one after another,
each in its own Python process (no import side effects, threads or memory carried from one to the next).

Each benchmark module has `main() -> dict` that measures ours and the library a user would pick side by
side in one run, prints a table and returns its numbers; this runner collects them into
`benchmarks/results.json` (or $ILM_BENCH_OUT) with the machine they came from.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
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


def _one(name: str, out: str) -> int:
    """Child process: run one benchmark, write its numbers as JSON."""
    module = importlib.import_module(f"benchmarks.{name}")
    Path(out).write_text(json.dumps(module.main(), default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--one"]:
        return _one(args[1], args[2])
    here = Path(__file__).parent
    names = args or sorted(p.stem for p in here.glob("bench_*.py"))
    results = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "benchmarks": {}}
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--one", name, tmp.name],
                                  cwd=here.parent, check=False)
            if done.returncode == 0:
                results["benchmarks"][name] = json.loads(Path(tmp.name).read_text())
            else:
                failed.append(name)
                results["benchmarks"][name] = {"error": f"exit status {done.returncode}"}
    out = Path(os.environ.get("ILM_BENCH_OUT", here / "results.json"))
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
