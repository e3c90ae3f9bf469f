"""`make demo`'s budget: the whole recipe on the built-in corpus in at most 15 minutes on 2 CPU cores.

Runs `ilm demo` in a fresh directory in a child process (as `make demo` does after installation), reads the
stage times it kept in `report.json` and checks the total against the budget. Wall time is a benchmark's
business, never a test's: `tests/test_demo.py` checks that every stage ran, this checks how long they took.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 15 * 60


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ilm.cli", "demo", "--out", str(out)], check=True)
        wall = time.perf_counter() - t0
        report = json.loads((out / "report.json").read_text())
    stages = report["stage_seconds"]
    print(f"{'stage':<12}{'seconds':>10}")
    for name, s in stages.items():
        print(f"{name:<12}{s:>10.1f}")
    print(f"{'total':<12}{sum(stages.values()):>10.1f}   (process wall time {wall:.1f} s, budget {BUDGET_S} s)")
    within = wall <= BUDGET_S
    print("within the 15-minute budget" if within else "OVER the 15-minute budget")
    return {"stage_seconds": stages, "stages_total_s": round(sum(stages.values()), 1), "wall_s": round(wall, 1),
            "budget_s": BUDGET_S, "within_budget": within}


if __name__ == "__main__":
    main()
