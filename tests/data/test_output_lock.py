"""Two runs on the same data output folder: the second fails at once with one clear line, the first finishes
(issue 10, item 17)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RECIPE = """
[[steps]]
type = "throttle"
seconds_per_doc = 0.01
"""


def test_second_run_on_the_same_output_fails_at_once(tmp_path: Path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        (inputs / f"p{i}.jsonl").write_text("".join(json.dumps({"text": f"doc {i} {j}"}) + "\n" for j in range(60)))
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ilm.cli", "data", "run", str(recipe), "-i", str(inputs), "-o", str(tmp_path / "out"),
           "-j", "1", "-q"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "out" / "plan.json").exists():  # the lock is taken before
        time.sleep(0.01)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert first.poll() is None, "the first run ended before the second started; make its input slower"
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    lines = [x for x in second.stderr.splitlines() if x.strip()]
    assert second.returncode != 0 and len(lines) == 1, second.stderr
    assert "is in use by another `ilm data run` (pid " in lines[0]
    assert json.loads((tmp_path / "out" / "ledger.json").read_text())["kept_docs"] == 180
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)  # the lock was released
    assert again.returncode == 0, again.stderr
