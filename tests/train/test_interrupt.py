"""Ctrl-C / SIGTERM during training: the step in progress finishes, a checkpoint is saved, one line says how to
resume, and the resumed run's losses equal an uninterrupted run's (issue 10, item 8); `--train.max_steps`
says what it did (item 9)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ilm.train import checkpoint


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ilm.cli", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_checkpoint_and_resume_matches(corpus, tmp_path, helpers, sig):
    straight = helpers.write_recipe(tmp_path / "a.toml", helpers.tiny_recipe(corpus, tmp_path / "straight", eval_every=1000))
    subprocess.run(_cli("pretrain", str(straight)), check=True, env=ENV, capture_output=True)
    recipe = helpers.write_recipe(tmp_path / "b.toml", helpers.tiny_recipe(corpus, tmp_path / "stopped", eval_every=1000))
    proc = subprocess.Popen(_cli("pretrain", str(recipe)), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    last = _lines(err)[-1]
    assert f"resume with: ilm pretrain {recipe} --resume auto" in last, err
    stopped_at = max(_losses(tmp_path / "stopped"))
    assert 3 <= stopped_at < 60
    assert f"at step {stopped_at}" in last
    assert checkpoint.latest(tmp_path / "stopped").name == f"step-{stopped_at:08d}"  # the step, not the last multiple of 10
    done = subprocess.run(_cli("pretrain", str(recipe), "--resume", "auto"), env=ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"at step {stopped_at}" in done.stdout
    assert _losses(tmp_path / "stopped") == _losses(tmp_path / "straight")


def test_max_steps_says_what_it_did(corpus, tmp_path, helpers):
    recipe = helpers.write_recipe(tmp_path / "r.toml", helpers.tiny_recipe(corpus, tmp_path / "run", eval_every=1000,
                                                                           total_tokens=512 * 12))
    short = subprocess.run(_cli("pretrain", str(recipe), "--train.max_steps=5", "--train.progress=true"), env=ENV,
                           capture_output=True, text=True, check=False)
    assert short.returncode == 0, short.stderr
    assert "train: 5/5 step (100%)" in short.stderr  # item 16: plain lines in a log
    total = json.loads(short.stdout[short.stdout.index("{"):])["total_steps"]
    assert _lines(short.stderr)[-1].startswith(f"stopped at step 5 of {total} (max_steps 5): not exported; resume with")
    batch = helpers.tiny_recipe(corpus, tmp_path / "x")["train"]["batch_tokens"]  # the override that would export
    assert _lines(short.stderr)[-1].endswith(f"shorten the schedule instead: --train.total_tokens={5 * batch}")
    assert not (tmp_path / "run" / "final").exists()
    full = subprocess.run(_cli("pretrain", str(recipe)), env=ENV, capture_output=True, text=True, check=False)
    assert full.returncode == 0 and "max_steps" not in full.stderr
    again = subprocess.run(_cli("pretrain", str(recipe), "--train.max_steps=5"), env=ENV, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert _lines(again.stderr)[-1] == f"the run had already finished at step {total}; nothing to do (max_steps 5 ignored)"


def test_two_processes_agree_on_the_step(corpus, tmp_path, helpers):
    """A signal to one rank only: both stop after the same step (the flag is all-reduced), one checkpoint."""
    recipe = helpers.write_recipe(tmp_path / "r.toml", helpers.tiny_recipe(corpus, tmp_path / "run", eval_every=1000))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "ilm.cli", "pretrain", str(recipe)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.02)
    ranks = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "ilm.cli"], capture_output=True, text=True,
                           check=False).stdout.split()
    assert len(ranks) == 2, ranks
    os.kill(int(max(ranks, key=int)), signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    stopped_at = max(_losses(tmp_path / "run"))
    assert 3 <= stopped_at < 60
    assert f"resume with: torchrun --nproc_per_node 2 -m ilm.cli pretrain {recipe} --resume auto" in err, err[-3000:]
    assert checkpoint.latest(tmp_path / "run").name == f"step-{stopped_at:08d}"
