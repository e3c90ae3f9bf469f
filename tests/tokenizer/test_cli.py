"""`ilm tokenizer build | train | encode | decode | render` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ilm.cli import main
from ilm.tokenizer import load_tokenizer

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tok"
    zh = out.parent / "zh.txt"
    zh.write_bytes(b"\xff\xfe\n\n" + (DATA / "zh_prose.txt").read_bytes())
    assert main(["tokenizer", "build", "--out", str(out), "--vocab-size", "512", "--chinese", str(zh)]) == 0
    return out


def test_build_writes_loadable_directory(built):
    tok = load_tokenizer(built)
    assert tok.vocab_size == 512 and tok.control_ids["<|im_start|>"] == 511
    assert (built / "tokenizer_config.json").exists() and (built / "special_tokens_map.json").exists()


def test_build_reports_skipped_lines(tmp_path, capsys):
    zh = tmp_path / "zh.txt"
    zh.write_bytes(b"\xff\n\n" + (DATA / "zh_prose.txt").read_bytes())
    assert main(["tokenizer", "build", "--out", str(tmp_path / "t"), "--vocab-size", "512", "--chinese", str(zh)]) == 0
    out = capsys.readouterr().out
    assert "512 tokens" in out and "invalid UTF-8 1" in out and "empty " in out


def test_encode_and_decode(built, capsys):
    tok = load_tokenizer(built)
    assert main(["tokenizer", "encode", "--tokenizer", str(built), "hello 世界<|im_end|>"]) == 0
    ids = json.loads(capsys.readouterr().out.splitlines()[0])
    assert ids == tok.encode("hello 世界<|im_end|>") and 511 - 1 not in ids
    assert main(["tokenizer", "encode", "--tokenizer", str(built), "--bos", "--special", "hi<|im_end|>"]) == 0
    ids = json.loads(capsys.readouterr().out.splitlines()[0])
    assert ids[0] == 1 and ids[-1] == 510
    assert main(["tokenizer", "decode", "--tokenizer", str(built), json.dumps(ids)]) == 0
    assert capsys.readouterr().out == "<s>hi<|im_end|>\n"


def test_render_prints_text_ids_and_mask(built, capsys):
    convs = json.loads((DATA / "conversations.json").read_text())
    path = built.parent / "conv.json"
    path.write_text(json.dumps({"messages": convs["tool_conv"], "tools": convs["tools"]}, ensure_ascii=False))
    r = load_tokenizer(built).render(convs["tool_conv"], tools=convs["tools"])
    assert main(["tokenizer", "render", "--tokenizer", str(built), str(path)]) == 0
    out = capsys.readouterr().out
    assert r.text in out
    assert ("ids  " + json.dumps(r.ids)) in out and ("mask " + json.dumps(r.mask)) in out
    assert f"{len(r.ids)} tokens, {sum(r.mask)} trained" in out
    assert main(["tokenizer", "render", "--json", "--generation-prompt", "--tokenizer", str(built), str(path)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["text"].endswith("<|im_start|>assistant\n") and len(got["ids"]) == len(got["mask"])


def test_train_verb(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text((DATA / "en_prose.txt").read_text() * 3)
    assert main(["tokenizer", "train", str(corpus), "--out", str(tmp_path / "t"), "--vocab-size", "512"]) == 0
    assert load_tokenizer(tmp_path / "t").vocab_size == 512


@pytest.mark.parametrize("argv, message", [
    (["build", "--vocab-size", "300"], "cannot hold the special block"),
    (["build", "--vocab-size", "1000"], "not a multiple of 128"),
    (["encode", "--tokenizer", "/nonexistent", "x"], "no tokenizer.json or tokenizer.model"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    if argv[0] == "build":
        argv = [*argv, "--out", str(tmp_path / "x")]
    assert main(["tokenizer", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
