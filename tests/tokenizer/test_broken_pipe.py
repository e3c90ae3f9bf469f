"""`ilm tokenizer render ... | head -1`: the reader closing the pipe ends the command quietly (no "Broken pipe"
error line, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_render_into_a_closed_pipe_is_quiet(small_tok, tmp_path):
    small_tok.save(tmp_path / "tok")
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps({"messages": [{"role": "user", "content": "hello world\n" * 40_000},
                                             {"role": "assistant", "content": "the fox"}]}))
    proc = subprocess.Popen([sys.executable, "-m", "ilm.cli", "tokenizer", "render", "--tokenizer",
                             str(tmp_path / "tok"), str(conv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()  # what `head -1` reads, then it closes the pipe
    proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert first.strip() == b"--- text ---"
    assert err == "", err
    assert code in (0, 141)
