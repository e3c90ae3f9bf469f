"""`ilm serve` at start: checkpoint layouts it loads, and one-line errors for bad input."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import sentencepiece as spm

from ilm.cli import main
from ilm.model import build_model, get_preset
from ilm.model.hf import save_checkpoint
from ilm.tokenizer.layout import NAMED_SPARE
from tests.serve.conftest import DATA, raw, serving

GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 12,
        "temperature": 0}


def _one_line_error(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert "Traceback" not in err


def test_bad_checkpoint_dirs(tmp_path, capsys, random_ckpt):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, ["serve", "--checkpoint", str(empty)], "no config.json")
    _one_line_error(capsys, ["serve", "--checkpoint", str(tmp_path / "missing")], "not a directory")
    no_tok = tmp_path / "no_tok"
    shutil.copytree(random_ckpt, no_tok)
    for f in ("tokenizer.json", "tokenizer.model"):
        (no_tok / f).unlink(missing_ok=True)
    _one_line_error(capsys, ["serve", "--checkpoint", str(no_tok)], "no tokenizer files")


def test_port_in_use(capsys, random_ckpt):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        _one_line_error(capsys, ["serve", "--checkpoint", str(random_ckpt), "--port", str(port)], "already in use")
    finally:
        taken.close()


def _released_layout(directory: Path, fmt: str) -> Path:
    """A checkpoint laid out like a released InternLM2 chat model: sentencepiece tokenizer.model with the
    named control pieces, config.json with auto_map and the shipped modeling code (InternLM2 layout)."""
    out = io.BytesIO()
    text = (DATA / "en_prose.txt").read_text()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=out, vocab_size=1200, model_type="bpe",
        user_defined_symbols=list(NAMED_SPARE), byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    model = build_model(get_preset("tiny", vocab_size=1280), seed=3)
    save_checkpoint(model, directory, fmt=fmt, extra_files={"tokenizer.model": out.getvalue()})
    return directory


def test_released_internlm2_layout_and_llama_layout_serve_alike(tmp_path):
    released = _released_layout(tmp_path / "internlm2-chat", "internlm2")
    config = json.loads((released / "config.json").read_text())
    assert "auto_map" in config and not (released / "tokenizer.json").exists()
    llama = tmp_path / "llama"
    assert main(["model", "convert", str(released), str(llama), "--to", "llama"]) == 0
    assert json.loads((llama / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    replies = []
    for ckpt in (released, llama):
        with serving(ckpt, max_batch=2) as (url, _):
            status, out = raw(url, "POST", "/v1/chat/completions", GOOD)
            assert status == 200, out
            replies.append((out["choices"][0]["message"], out["usage"]))
    assert replies[0] == replies[1]
    assert replies[0][1]["completion_tokens"] >= 1


def test_ilm_serve_subprocess(random_ckpt):
    """The real command: prints where it listens, serves, binds 127.0.0.1 by default."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                       os.environ.get("PYTHONPATH", "")]), ILM_API_KEY="sekret")
    proc = subprocess.Popen([sys.executable, "-m", "ilm.cli", "serve", "--checkpoint", str(random_ckpt), "--port",
                             str(port), "--model-name", "tiny", "--max-batch", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1" in line, (line, proc.stderr.read() if proc.poll() else "")
        assert "model id 'tiny'" in line and "API key required" in line  # the id clients must send
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                status, health = raw(url, "GET", "/health")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert status == 200 and health["status"] == "ok" and health["max_batch"] == 4
        assert raw(url, "POST", "/v1/chat/completions", GOOD)[0] == 401  # the key came from ILM_API_KEY
        status, out = raw(url, "POST", "/v1/chat/completions", GOOD, {"Authorization": "Bearer sekret"})
        assert status == 200 and out["model"] == "tiny"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_api_key_sources(tmp_path, monkeypatch, capsys, random_ckpt):
    """A file, the ILM_API_KEY variable, or --api-key with a warning that every process can read it."""
    import argparse

    from ilm.serve.cli import api_key

    def args(**kw):
        return argparse.Namespace(**{"api_key": None, "api_key_file": None, **kw})

    monkeypatch.delenv("ILM_API_KEY", raising=False)
    assert api_key(args()) == (None, None)
    monkeypatch.setenv("ILM_API_KEY", "from-env")
    assert api_key(args()) == ("from-env", None)
    keyfile = tmp_path / "key"
    keyfile.write_text("from-file\n")
    assert api_key(args(api_key_file=str(keyfile))) == ("from-file", None)
    key, warning = api_key(args(api_key="on-the-line"))
    assert key == "on-the-line" and "every process" in warning and "ILM_API_KEY" in warning
    (tmp_path / "empty").write_text("")
    _one_line_error(capsys, ["serve", "--checkpoint", str(random_ckpt), "--api-key-file", str(tmp_path / "empty")],
                    "is empty")
    _one_line_error(capsys, ["serve", "--checkpoint", str(random_ckpt), "--api-key-file", str(tmp_path / "none")],
                    "cannot read the API key")
