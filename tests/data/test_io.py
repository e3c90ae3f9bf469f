"""Readers/writers and bad input: formats round-trip; malformed JSON, invalid UTF-8, missing text,
empty and 50 MB documents are accounted for; a truncated .gz fails only its shard, naming the file."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np
import pytest

from ilm.data import run_pipeline
from ilm.data.dedup import MinHashDedup
from ilm.data.document import Document, to_seconds
from ilm.data.executor import PipelineError
from ilm.data.io import read_all, read_documents, write_documents
from ilm.data.normalize import HtmlToText, Normalize
from ilm.data.quality import GopherQuality, GopherRepetition

from .conftest import assert_balanced


@pytest.mark.parametrize("ext", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
def test_round_trip(ext: str, tmp_path: Path) -> None:
    docs = [Document("a", "héllo\nwörld 中文", "src", "2024-01-02T03:04:05Z", {"url": "https://x.org", "n": 1}),
            Document("b", "", "src", 1700000000, {})]
    p = tmp_path / f"f.{ext}"
    assert write_documents(p, docs) == 2
    back = read_all(p)
    assert [(d.id, d.text, d.metadata) for d in back] == [(d.id, d.text, d.metadata) for d in docs]
    assert [d.time_seconds() for d in back] == [to_seconds("2024-01-02T03:04:05Z"), 1700000000.0]
    assert not list(tmp_path.glob("*.tmp"))


def test_output_bytes_are_deterministic(tmp_path: Path) -> None:
    docs = [Document(str(i), f"text {i}", "s") for i in range(100)]
    for ext in ("jsonl.gz", "jsonl.zst"):
        write_documents(tmp_path / f"a.{ext}", docs)
        time.sleep(1.1 if ext == "jsonl.gz" else 0)  # gzip would embed the time if we let it
        write_documents(tmp_path / f"b.{ext}", docs)
        assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()


def test_warc_input_and_html_extraction(tmp_path: Path, real_texts: list[str]) -> None:
    from io import BytesIO

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path = tmp_path / "crawl.warc.gz"
    paras = real_texts[0].split("\n\n")
    html = ("<html><body><nav>Home | About | Login</nav><article>" + "".join(f"<p>{p}</p>" for p in paras)
            + "</article><footer>Copyright 2024 Example Inc.</footer></body></html>").encode()
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for url, ctype, body in (("https://ex.org/a", "text/html; charset=utf-8", html), ("https://ex.org/img.png", "image/png", b"\x89PNG")):
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=BytesIO(body), http_headers=headers))
    run_pipeline([HtmlToText(), Normalize()], path, tmp_path / "out")
    kept, removed = assert_balanced(tmp_path / "out")
    assert len(kept) == 1 and kept[0].metadata["url"] == "https://ex.org/a"
    assert paras[0][:80] in kept[0].text and "Login" not in kept[0].text and "<p>" not in kept[0].text
    assert [d.metadata["removed"]["reason"] for d in removed] == ["not_html"]


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_bad_records_are_quarantined_with_file_and_line(tmp_path: Path, real_texts: list[str]) -> None:
    good = [json.dumps({"id": f"g{i}", "text": t}).encode() for i, t in enumerate(real_texts[:5])]
    lines = good[:2] + [b'{"id": "broken", "text": "unterminated', b'{"id": "notext", "body": "x"}', b"[1, 2]",
                        json.dumps({"id": "bad-utf8", "text": "caf"}).encode().replace(b"caf", b"caf\xff\xfe"),
                        json.dumps({"id": "empty", "text": "  \n "}).encode()] + good[2:]
    src = tmp_path / "in.jsonl"
    _write_lines(src, lines)
    led = run_pipeline([Normalize()], src, tmp_path / "out")
    kept, removed = assert_balanced(tmp_path / "out")
    by_reason = {d.metadata["removed"]["reason"]: d for d in removed}
    assert set(by_reason) == {"malformed_json", "missing_text", "not_an_object", "empty"}
    assert by_reason["malformed_json"].metadata["file"] == str(src) and by_reason["malformed_json"].metadata["line"] == 3
    assert by_reason["missing_text"].metadata["line"] == 4 and by_reason["malformed_json"].text.startswith('{"id": "broken"')
    assert "\ufffd" in next(d.text for d in kept if d.id == "bad-utf8")
    assert led["counters"] == {"invalid_utf8": 1} and led["input_docs"] == len(lines)
    # quarantine mode: the invalid line goes to removed instead, still counted
    led = run_pipeline([Normalize()], src, tmp_path / "out2", on_invalid_utf8="quarantine")
    _, removed = assert_balanced(tmp_path / "out2")
    assert "invalid_utf8" in {d.metadata["removed"]["reason"] for d in removed} and led["counters"] == {"invalid_utf8": 1}


def test_truncated_gzip_fails_its_shard_only_and_names_the_file(tmp_path: Path, real_texts: list[str]) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(3):
        write_documents(inp / f"s{i}.jsonl.gz", [Document(f"{i}-{k}", t, "s") for k, t in enumerate(real_texts[i * 200 : i * 200 + 200])])
    bad = inp / "s1.jsonl.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError) as err:
        run_pipeline([Normalize()], inp, tmp_path / "out", workers=2)
    assert "s1.jsonl.gz" in str(err.value) and "truncated" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "out" / "markers" / "s0").glob("*.json")) == ["shard-00000.json", "shard-00002.json"]
    assert not (tmp_path / "out" / "kept" / "shard-00001.jsonl.zst").exists()
    with pytest.raises(Exception, match="s1.jsonl.gz"):
        list(read_documents(bad))


@pytest.mark.slow
def test_fifty_megabyte_document(tmp_path: Path, real_texts: list[str]) -> None:
    rng = np.random.default_rng(0)
    vocab = np.array(sorted({w for t in real_texts for w in t.split()}))
    words = vocab[rng.integers(0, len(vocab), 5_600_000)]
    big = " ".join(words.tolist())
    while len(big) < 50_000_000:
        big += " " + big[: 50_000_000 - len(big)]
    src = tmp_path / "big.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        f.write(json.dumps({"id": "big", "text": big}) + "\n")
        f.writelines(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(real_texts[:20]))
    del big, words
    cpu0 = _cpu_seconds()
    led = run_pipeline([Normalize(), GopherQuality(max_words=20_000_000), GopherRepetition(), MinHashDedup()], src, tmp_path / "out")
    cpu = _cpu_seconds() - cpu0
    assert_balanced(tmp_path / "out", ["big"] + [f"d{i}" for i in range(20)])
    assert led["input_bytes"] > 50_000_000
    # CPU seconds, not wall time (a loaded machine stretches wall time 10x): ~10 s here; a quadratic step
    # on a 50 MB document would take hours
    assert cpu < 300, cpu


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
