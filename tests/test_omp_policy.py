"""`import ilm` makes OpenMP threads wait passively (benchmarks/bench_load.py: spin-waiting threads beside busy
neighbours cut a tiny model's training 30-100x), before torch loads OpenMP; an explicit setting still wins."""

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
CODE = "import ilm, os, torch; print(os.environ['OMP_WAIT_POLICY'])"


def _policy(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", CODE], env={**base, "PYTHONPATH": SRC, **env}, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.strip()


def test_import_sets_a_passive_wait_policy_unless_one_is_given():
    assert _policy() == "PASSIVE"
    assert _policy(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
