"""`ilm rlhf review import RUN_DIR FILE` without --round on a run that is not waiting on a review: one line that
names the rounds that do have suspects, never a round that does not exist."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_without_round_names_the_rounds_with_suspects(tmp_path):
    run = tmp_path / "rounds"
    for k in (1, 2):
        (run / f"round-{k:02d}").mkdir(parents=True)
        (run / f"round-{k:02d}" / "suspects.jsonl").write_text(json.dumps({"id": f"r{k}-u1-0"}) + "\n")
    (run / "state.json").write_text(json.dumps({"round": 3}))  # finished after two rounds
    done = tmp_path / "done.jsonl"
    done.write_text(json.dumps({"id": "r2-u1-0", "verdict": "approve"}) + "\n")
    r = subprocess.run([sys.executable, "-m", "ilm.cli", "rlhf", "review", "import", str(run), str(done)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "round 3 of" in r.stderr and "pass --round with one that has: 1, 2" in r.stderr
    ok = subprocess.run([sys.executable, "-m", "ilm.cli", "rlhf", "review", "import", str(run), str(done), "--round", "2"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "1 verdicts imported" in ok.stdout, ok.stderr
