"""Progress in logs (issue 10, item 16): when stderr is not a terminal, bars become a bounded number of plain
lines (no carriage returns); `ilm tokenizer build` says what it is doing."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_plain_lines_when_not_a_terminal():
    from ilm.progress import PlainProgress, progress_bar

    out = io.StringIO()
    bar = progress_bar(10_000, desc="work", unit="item", stream=out)
    assert isinstance(bar, PlainProgress)
    for i in range(10_000):
        bar.update(1)
        bar.set_postfix({"i": i})
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [text.splitlines()[-1]]  # 30 s between lines: only the final one here
    assert text.startswith("work: 10,000/10,000 item (100%)") and "i=9999" in text


def test_plain_lines_are_periodic():
    from ilm.progress import PlainProgress

    out = io.StringIO()
    bar = PlainProgress(5, "x", stream=out, seconds=0.0)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert len(out.getvalue().splitlines()) == 6 and "\r" not in out.getvalue()


def test_data_run_log_has_no_carriage_returns(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        (inputs / f"p{i}.jsonl").write_text("".join(json.dumps({"text": f"doc {i} {j} " * 9}) + "\n" for j in range(50)))
    done = subprocess.run([sys.executable, "-m", "ilm.cli", "data", "run", str(REPO / "recipes/data/minhash-only.toml"),
                           "-i", str(inputs), "-o", str(tmp_path / "out"), "-j", "1"],
                          env=ENV, capture_output=True, check=False)  # bytes: text mode would turn \r into \n
    assert done.returncode == 0, done.stderr
    assert b"\r" not in done.stderr
    assert 1 <= len([x for x in done.stderr.splitlines() if x.strip()]) <= 4, done.stderr  # one line per pass


def test_tokenizer_build_reports_its_stages(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ilm.cli", "tokenizer", "build", "--out", str(tmp_path / "tok"),
                           "--vocab-size", "1024", "--chinese", str(REPO / "tests/tokenizer/data/zh_prose.txt")],
                          env=ENV, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert b"\r" not in done.stderr
    done.stderr = done.stderr.decode()
    assert "learning 306 Chinese merges" in done.stderr and "Chinese merges: 306/306 merge (100%)" in done.stderr
