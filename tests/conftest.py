"""Suite-wide settings, and the guard that keeps the suite hermetic.

No test may read or write the checkout's run outputs: a shipped recipe's relative paths (`runs/demo/...`)
resolve against $ILM_BASE_DIR when it is set, so it is set here, for every test and every subprocess a test
starts, to a temp dir (one per test; tests of the path rule itself unset it), and every test runs in a
temp working directory. After the whole session the
controller checks that every file under `runs/` of the checkout is as it was before (`make demo` then
`make test` must leave the demo's run untouched) and that no new untracked or ignored path appeared in the
checkout (caches aside), and fails the session otherwise, naming what changed. `.ci/run` checks `runs/demo`
byte for byte as well.
"""

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# isort: off
import ilm  # noqa: F401 - first: it sets OMP_WAIT_POLICY before torch loads OpenMP (benchmarks/bench_load.py)
import torch
# isort: on

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist each worker gets one thread: two workers on two cores must not oversubscribe them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

if not os.environ.get("ILM_TESTS_BASE_DIR"):  # xdist workers inherit the controller's
    os.environ["ILM_TESTS_BASE_DIR"] = tempfile.mkdtemp(prefix="ilm-tests-base-")
    atexit.register(shutil.rmtree, os.environ["ILM_TESTS_BASE_DIR"], ignore_errors=True)
os.environ["ILM_BASE_DIR"] = os.environ["ILM_TESTS_BASE_DIR"]


@pytest.fixture(autouse=True)
def _outside_the_checkout(tmp_path_factory, monkeypatch):
    """Each test its own recipe base dir (a shipped recipe run by one test never sees another's outputs) and
    its own working directory: a default relative output (`runs/sft`, a config's run_dir) lands in a temp
    dir, not in the checkout pytest was started from. Tests read repository files by absolute path."""
    monkeypatch.setenv("ILM_BASE_DIR", str(tmp_path_factory.mktemp("recipe-base")))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: (size, mtime in ns); a write, a new file or a removal changes it."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", ".egg-info")


def new_paths() -> set[str]:
    """Untracked and ignored paths of the checkout (git's collapsed view), caches left out; empty outside git."""
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    if done.returncode != 0:
        return set()
    return {line[3:] for line in done.stdout.splitlines()
            if line[:2] in ("??", "!!") and not any(c in line for c in CACHES)}


def pytest_sessionstart(session):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        session.config._ilm_checkout_before = (tree_state(REPO / "runs"), new_paths())


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_ilm_checkout_before", None)
    if before is None:
        return
    runs, paths = before
    after = tree_state(REPO / "runs")
    changed = sorted(f"runs/{k}" for k in runs.keys() | after.keys() if runs.get(k) != after.get(k))
    changed += sorted(new_paths() - paths - {"runs/"})
    if changed:
        print(f"\nerror: the tests changed {len(changed)} path(s) in the checkout {REPO} (a test must write to a "
              f"temp dir only): {', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}")
        session.exitstatus = 1
