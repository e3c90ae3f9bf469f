"""`ilm data` verbs end to end (run, report with PNG, bands, errors), the demo corpus funnel, and the
Ray executor keeping the same documents as the local one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ilm.cli import main
from ilm.data import run_pipeline, write_demo_corpus
from ilm.data.document import Document
from ilm.data.io import write_documents

from .conftest import assert_balanced, write_shards

ROOT = Path(__file__).resolve().parents[2]


def test_default_recipe_on_demo_corpus_cli_and_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, plan = write_demo_corpus(tmp_path / "in", n_shards=3, n_real=150)
    assert main(["data", "run", str(ROOT / "recipes/data/internlm2.toml"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-q"]) == 0
    kept, removed = assert_balanced(tmp_path / "out")
    assert len(kept) + len(removed) == plan["documents"]
    reasons = {d.metadata["removed"]["reason"]: d.id for d in removed}
    # every planted case is caught by the step meant for it
    assert reasons["malformed_json"].startswith("corpus-000") and reasons["blocked_domain"] == "blocked-site"
    assert reasons["sensitive_words"] == "sensitive" and reasons["toxic"] == "junk-toxic-0" and reasons["empty"] == "junk-empty"
    assert {"exact_duplicate", "near_duplicate", "language_other"} <= set(reasons)
    near = [d for d in removed if d.metadata["removed"]["reason"] == "near_duplicate"]
    assert sum(d.id.startswith("real-") for d in near) >= 0.8 * len(near)  # the newer edited copies survive
    assert any(d.id.startswith("html-") for d in kept)
    assert main(["data", "report", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "minhash_dedup" in out and "[OK]" in out
    png = (tmp_path / "out" / "funnel.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cli_bands_and_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "bands"]) == 0
    assert "14 bands x 9 rows" in capsys.readouterr().out
    (tmp_path / "in").mkdir()
    write_documents(tmp_path / "in" / "a.jsonl.gz", [Document("a", "some text here")])
    (tmp_path / "in" / "b.jsonl.gz").write_bytes((tmp_path / "in" / "a.jsonl.gz").read_bytes()[:-12])
    assert main(["data", "run", str(ROOT / "recipes/data/minhash-only.toml"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "b.jsonl.gz" in err and "1 shard(s) failed" in err


def test_recipe_rejects_unknown_keys(tmp_path: Path) -> None:
    from ilm.data.recipe import load_recipe

    (tmp_path / "r.toml").write_text('[[steps]]\ntype = "minhash_dedup"\nthreshhold = 0.7\n')
    with pytest.raises(ValueError, match="threshhold"):
        load_recipe(tmp_path / "r.toml")
    steps, _ = load_recipe(ROOT / "recipes/data/internlm2.toml")
    mh = next(s for s in steps if s.type == "minhash_dedup")
    assert (mh.ngram, mh.num_perm, mh.threshold, mh.bands, mh.rows) == (5, 128, 0.7, 14, 9)


def a_removed_by(out: Path, reason: str) -> int:
    led = json.loads((out / "ledger.json").read_text())
    return sum(r["reasons"].get(reason, 0) for r in led["funnel"])


def test_ray_executor_keeps_the_same_documents(real_texts: list[str], tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    import random

    from ilm.data.corpus import edit_words

    rng = random.Random(0)
    docs = [Document(f"d{i}", t, "s", i) for i, t in enumerate(real_texts[:150])]
    docs += [Document(f"n{i}", edit_words(real_texts[i], 0.03, rng, ["zz", "yy"]), "s", 1000 + i) for i in range(0, 150, 5)]
    write_shards(tmp_path / "in", docs, 4)
    recipe = ROOT / "recipes/data/internlm2.toml"
    try:
        run_pipeline(recipe, tmp_path / "in", tmp_path / "ray", executor="ray", workers=2)
    finally:
        ray.shutdown()
    run_pipeline(recipe, tmp_path / "in", tmp_path / "local", workers=2)
    k_ray, _ = assert_balanced(tmp_path / "ray", [d.id for d in docs])
    k_loc, _ = assert_balanced(tmp_path / "local", [d.id for d in docs])
    assert sorted(d.id for d in k_ray) == sorted(d.id for d in k_loc) and len(k_loc) > 50
    assert a_removed_by(tmp_path / "local", "near_duplicate") > 5
    a = json.loads((tmp_path / "ray" / "ledger.json").read_text())
    b = json.loads((tmp_path / "local" / "ledger.json").read_text())
    assert a == b
