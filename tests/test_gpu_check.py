"""The GPU check's CPU dry run (`python -m benchmarks.gpu_check --dry-run`): every part runs with tiny shapes,
so the script cannot rot between the rare GPU runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["cuda_paths", "bf16_decode", "training", "ppo", "serving", "niah_32k", "fsdp2"]


def test_dry_run_writes_every_part_and_each_passes_or_says_why_it_skipped(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path), "--dry-run"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert report["machine"]["torch"] == torch.__version__ and "cpus" in report["machine"]
    assert list(report["parts"]) == PARTS  # in order of value
    for name, part in report["parts"].items():
        assert part["status"] in ("pass", "skip"), (name, part)
        assert isinstance(part["seconds"], float) and part["budget_s"] > 0
        assert part.get("headline") or part.get("reason"), name
        assert name in done.stdout  # the table
    parts = report["parts"]
    if parts["cuda_paths"]["status"] == "pass":
        assert all(v["ok"] for v in parts["cuda_paths"]["checks"].values() if isinstance(v, dict))
    if parts["ppo"]["status"] == "pass":
        assert parts["ppo"]["updates"][0]["clip_fraction"] == 0.0  # ratio exactly 1 in the first mini-batch
    if parts["serving"]["status"] == "pass":
        assert parts["serving"]["greedy_equals_generate"] is True


def test_a_part_past_its_budget_is_stopped_and_a_missing_library_skips_it(tmp_path):
    from benchmarks.gpu_check import Context, run_part

    ctx = Context(dry=True, device=torch.device("cpu"), tmp=tmp_path, out=tmp_path)
    skipped = run_part("x", "gpu_parts_model:cuda_paths", 60, ("no_such_library_for_ilm",), ctx)
    assert skipped["status"] == "skip" and "no_such_library_for_ilm" in skipped["reason"]
    stopped = run_part("x", "gpu_parts_model:cuda_paths", 0.05, (), ctx)
    assert stopped["status"] == "timeout" and stopped["budget_s"] == 0
