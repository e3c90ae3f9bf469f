"""Executor acceptance: kill -9 mid-run and rerun gives the uninterrupted result; the ledger balances;
a step that loses documents fails its shard; workers and shard order do not change the output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from ilm.data import run_pipeline
from ilm.data.base import Context, Step
from ilm.data.corpus import edit_words
from ilm.data.dedup import ExactDedup, MinHashDedup
from ilm.data.document import Document
from ilm.data.executor import PipelineError
from ilm.data.normalize import Normalize
from ilm.data.quality import GopherQuality

from .conftest import assert_balanced, write_shards

RECIPE = """
[run]
workers = 2
[[steps]]
type = "normalize"
[[steps]]
type = "throttle"
seconds_per_doc = {delay}
[[steps]]
type = "gopher_quality"
[[steps]]
type = "exact_dedup"
[[steps]]
type = "minhash_dedup"
"""


def _corpus(real_texts: list[str], n: int = 240) -> list[Document]:
    import random

    rng = random.Random(1)
    docs = [Document(f"d{i:04d}", t, "s", 1000 + i) for i, t in enumerate(real_texts[:n])]
    vocab = sorted({w for t in real_texts[:40] for w in t.split()})
    docs += [Document(f"n{i:04d}", edit_words(real_texts[i], 0.03, rng, vocab), "s", 5000 + i) for i in range(0, n, 6)]
    docs += [Document(f"e{i:04d}", real_texts[i], "s", 9000 + i) for i in range(0, n, 10)]
    docs += [Document(f"s{i:04d}", "too short", "s", 1) for i in range(10)]
    rng.shuffle(docs)
    return docs


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for sub in ("kept", "removed") for p in sorted((out / sub).glob("*"))}


def _markers(out: Path, seg: int) -> int:
    return len(list((out / "markers" / f"s{seg}").glob("*.json")))


def _start(recipe: Path, inputs: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ilm.cli", "data", "run", str(recipe), "-i", str(inputs), "-o", str(out), "-q"]
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, cond, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"run ended before the kill point: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() - t0 < timeout, "kill point never reached"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill9_then_rerun_equals_uninterrupted(real_texts: list[str], tmp_path: Path) -> None:
    docs = _corpus(real_texts)
    write_shards(tmp_path / "in", docs, 8)
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(delay=0.004))
    ref = tmp_path / "ref"
    run_pipeline(recipe, tmp_path / "in", ref)
    # kill 1: during the first pass, after some shards finished
    out = tmp_path / "out"
    _kill_when(_start(recipe, tmp_path / "in", out), lambda: _markers(out, 0) >= 2)
    assert 2 <= _markers(out, 0) < 8 and not (out / "ledger.json").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "markers" / "s0").glob("*.json")}
    # kill 2: the rerun is killed again in the second pass (after the exact-dedup reduce)
    _kill_when(_start(recipe, tmp_path / "in", out), lambda: _markers(out, 1) >= 1)
    assert _markers(out, 0) == 8 and _markers(out, 1) < 8 and not (out / "ledger.json").exists()
    proc = subprocess.run([sys.executable, "-m", "ilm.cli", "data", "run", str(recipe), "-i", str(tmp_path / "in"), "-o", str(out), "-q"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert _files(out) == _files(ref)
    assert all((out / "markers" / "s0" / n).stat().st_mtime_ns == t for n, t in finished.items()), "finished shards were redone"
    assert (out / "ledger.json").read_text() == (ref / "ledger.json").read_text()
    _, removed = assert_balanced(out, [d.id for d in docs])
    assert not list(out.rglob("*.tmp"))
    reasons = {d.metadata["removed"]["reason"] for d in removed}
    assert {"near_duplicate", "exact_duplicate", "gopher_too_few_words"} <= reasons


def test_workers_and_formats_do_not_change_kept_documents(real_texts: list[str], tmp_path: Path) -> None:
    docs = _corpus(real_texts, 120)
    steps = lambda: [Normalize(), GopherQuality(), MinHashDedup()]
    write_shards(tmp_path / "a", docs, 4, "jsonl.gz")
    write_shards(tmp_path / "b", docs, 4, "parquet")
    run_pipeline(steps(), tmp_path / "a", tmp_path / "o1", workers=1)
    run_pipeline(steps(), tmp_path / "b", tmp_path / "o2", workers=2, output_format="parquet")
    k1, _ = assert_balanced(tmp_path / "o1", [d.id for d in docs])
    k2, _ = assert_balanced(tmp_path / "o2", [d.id for d in docs])
    assert sorted((d.id, d.text) for d in k1) == sorted((d.id, d.text) for d in k2)
    assert json.loads((tmp_path / "o1" / "ledger.json").read_text())["funnel"] == json.loads((tmp_path / "o2" / "ledger.json").read_text())["funnel"]


@dataclass
class _Leaky(Step):
    """A buggy step that silently swallows every third document."""

    type: ClassVar[str] = "leaky"

    def run(self, docs: Iterator[Document], ctx: Context) -> Iterator[Document]:
        for i, d in enumerate(docs):
            if i % 3:
                yield d


def test_a_step_that_loses_documents_fails_the_ledger(real_texts: list[str], tmp_path: Path) -> None:
    docs = [Document(f"d{i}", t, "s", i) for i, t in enumerate(real_texts[:30])]
    write_shards(tmp_path / "in", docs, 2)
    with pytest.raises(PipelineError, match="documents in"):
        run_pipeline([_Leaky()], tmp_path / "in", tmp_path / "out")
    assert not list((tmp_path / "out" / "markers").rglob("*.json"))


def test_rerun_with_a_different_plan_is_refused(real_texts: list[str], tmp_path: Path) -> None:
    docs = [Document(f"d{i}", t, "s", i) for i, t in enumerate(real_texts[:20])]
    write_shards(tmp_path / "in", docs, 2)
    led = run_pipeline([Normalize()], tmp_path / "in", tmp_path / "out")
    assert led["kept_docs"] == 20
    again = run_pipeline([Normalize()], tmp_path / "in", tmp_path / "out")  # resume of a finished run: same ledger
    assert again == led
    with pytest.raises(PipelineError, match="different plan"):
        run_pipeline([Normalize(), GopherQuality()], tmp_path / "in", tmp_path / "out")


STATE_FILES = ["plan.json", "markers/s0/shard-00000.json", "markers/s1/shard-00001.json", "markers/s2/shard-00002.json",
               "global/exact_dedup/_reduced.json", "global/minhash_dedup/_reduced.json", "ledger.json", "timings.json"]


def _state_files(out: Path) -> list[str]:
    """Every state file the executor leaves (json outside kept/ and removed/)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.json") if p.relative_to(out).parts[0] not in ("kept", "removed"))


@pytest.fixture(scope="module")
def torn_case(real_texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("torn")
    docs = _corpus(real_texts, 60)
    write_shards(tmp / "in", docs, 3)
    steps = lambda: [Normalize(), GopherQuality(), ExactDedup(), MinHashDedup()]
    ref = run_pipeline(steps(), tmp / "in", tmp / "ref", workers=1)
    return {"tmp": tmp, "docs": docs, "steps": steps, "ledger": ref, "files": _files(tmp / "ref")}


@pytest.mark.parametrize("size", ["empty", "half"])
@pytest.mark.parametrize("name", STATE_FILES)
def test_torn_state_file_is_redone_with_a_notice(torn_case: dict, name: str, size: str, capsys) -> None:
    """Each state file cut short after a finished run: the rerun treats it as not done, says so in one
    line on stderr, redoes that shard or reduce (and the earlier passes the shard needs, stages/ being
    gone) and ends with the same kept and removed documents and the same ledger."""
    tmp = torn_case["tmp"]
    out = tmp / f"out-{name.replace('/', '_')}-{size}"
    run_pipeline(torn_case["steps"](), tmp / "in", out, workers=1)
    markers = [f"markers/s{k}/shard-{i:05d}.json" for k in range(3) for i in range(3)]
    assert _state_files(out) == sorted({*STATE_FILES, *markers}), "a state file this test does not tear"
    path = out / name
    data = path.read_bytes()
    path.write_bytes(b"" if size == "empty" else data[: len(data) // 2])
    capsys.readouterr()
    ledger = run_pipeline(torn_case["steps"](), tmp / "in", out, workers=1)
    err = capsys.readouterr().err
    assert ledger == torn_case["ledger"]
    assert json.loads((out / "ledger.json").read_text()) == torn_case["ledger"]
    assert _files(out) == torn_case["files"]
    json.loads(path.read_text())  # rewritten whole
    notices = [line for line in err.splitlines() if "unreadable" in line]
    if name in ("ledger.json", "timings.json"):  # outputs only, never read back: simply rewritten
        assert notices == []
    else:
        assert len(notices) == 1 and name in notices[0] and "redoing" in notices[0]
    assert "Traceback" not in err
    assert not list(out.rglob("*.tmp"))
