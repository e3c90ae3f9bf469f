"""Wrong input formats do not pass silently (issue 10, item 10): plain text files are documents (one per file),
and a file none of whose lines is a JSON record fails with a message naming it and the formats expected."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "data" / "minhash-only.toml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TEXT = "".join(f"Line {i} of a plain text note about rivers, stones and the weather.\n" for i in range(400))


def _ilm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ilm.cli", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          check=False)


def test_text_file_is_one_document(tmp_path):
    (tmp_path / "notes.txt").write_text(TEXT)
    done = _ilm("data", "run", str(RECIPE), "-i", "notes.txt", "-o", "out", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ledger = json.loads((tmp_path / "out" / "ledger.json").read_text())
    assert ledger["input_docs"] == 1 and ledger["kept_docs"] == 1
    from ilm.data.io import read_all

    (doc,) = read_all(tmp_path / "out" / "kept")
    assert doc.text == TEXT and doc.id == "notes.txt"


def test_all_malformed_lines_fail_naming_the_file(tmp_path):
    (tmp_path / "notes.jsonl").write_text(TEXT)
    done = _ilm("data", "run", str(RECIPE), "-i", "notes.jsonl", "-o", "out", "-q", cwd=tmp_path)
    assert done.returncode != 0 and "[OK]" not in done.stdout
    assert "notes.jsonl: none of its first 100 lines is a JSON record" in done.stderr and ".txt" in done.stderr
    assert "Traceback" not in done.stderr


def test_pretrain_tokenize_reads_text_and_names_a_bad_file(tmp_path):
    text = "\n".join(p.read_text() for p in sorted(Path(os.__file__).parent.glob("json/*.py")))
    (tmp_path / "corpus.txt").write_text(text)
    assert _ilm("tokenizer", "train", "corpus.txt", "--out", "tok", "--vocab-size", "512", cwd=tmp_path).returncode == 0
    (tmp_path / "notes.txt").write_text(TEXT)
    done = _ilm("pretrain", "tokenize", "--tokenizer", "tok", "--out", "shards", "notes.txt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (tmp_path / "notes.jsonl").write_text(TEXT)
    bad = _ilm("pretrain", "tokenize", "--tokenizer", "tok", "--out", "shards2", "notes.jsonl", cwd=tmp_path)
    lines = [x for x in bad.stderr.splitlines() if x.strip()]
    assert bad.returncode != 0 and len(lines) == 1 and "notes.jsonl: none of its first" in lines[0], bad.stderr
