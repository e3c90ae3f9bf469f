import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ilm.config import from_dict
from ilm.data.shards import TokenShards
from ilm.model import build_model, get_preset, packed_batch, positions_from_doc_ids
from ilm.model.hf import load_checkpoint
from ilm.train import checkpoint
from ilm.train.pretrain import PretrainConfig, plan_stages, train, unigram_entropy

REPO = Path(__file__).resolve().parents[2]


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def _cli(recipe: Path, *extra: str, nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "ilm.cli", "pretrain", str(recipe), *extra]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    # --standalone: a free rendezvous port, so parallel test workers never collide on 29500
    return [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "ilm.cli", "pretrain", str(recipe), *extra]


def test_kill9_then_resume_equals_uninterrupted(corpus, tmp_path, helpers):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = helpers.write_recipe(tmp_path / "a.toml", helpers.tiny_recipe(corpus, tmp_path / "straight"))
    subprocess.run(_cli(straight), check=True, env=env, capture_output=True)
    recipe = helpers.write_recipe(tmp_path / "b.toml", helpers.tiny_recipe(corpus, tmp_path / "killed"))
    proc = subprocess.Popen(_cli(recipe, "--train.log_every=1"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill -9 once past the step-20 checkpoint, mid-way to the next
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 25:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(metrics.read_text().splitlines())
    assert 25 <= done_before < 60, done_before
    assert checkpoint.latest(tmp_path / "killed").name in ("step-00000020", "step-00000030", "step-00000040", "step-00000050")
    out = subprocess.run(_cli(recipe), env=env, capture_output=True, text=True, check=True)
    assert "resumed from" in out.stdout
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "straight")  # exactly, every step


def test_two_process_fsdp_matches_single_process(corpus, tmp_path, helpers):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for nproc in (1, 2):
        recipe = helpers.write_recipe(tmp_path / f"r{nproc}.toml", helpers.tiny_recipe(
            corpus, tmp_path / f"run{nproc}", max_steps=15, checkpoint_every=15, eval_every=1000))
        done = subprocess.run(_cli(recipe, nproc=nproc), check=False, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[nproc] = _losses(tmp_path / f"run{nproc}")
    assert sorted(runs[1]) == sorted(runs[2]) == list(range(1, 16))
    worst = max(abs(runs[1][s] - runs[2][s]) / runs[1][s] for s in runs[1])
    assert worst < 1e-4  # stated tolerance: 1e-4 relative (float reduction order differs)
    assert runs[1][15] < runs[1][1] - 0.5  # and it is a real training run


def test_packed_training_never_attends_across_documents():
    model = build_model(get_preset("tiny"), seed=0)
    ids = torch.randint(3, 512, (1, 48))
    doc_ids = torch.tensor([[0] * 10 + [1] * 20 + [2] * 18])

    def per_token_loss(x):
        logits = model(x, positions_from_doc_ids(doc_ids), packed_batch(doc_ids))
        return torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="none")

    changed = ids.clone()
    changed[0, 10:30] = torch.randint(3, 512, (20,))  # a different middle document
    a, b = per_token_loss(ids), per_token_loss(changed)
    keep = list(range(9)) + list(range(30, 47))  # predictions inside documents 0 and 2
    assert torch.allclose(a[keep], b[keep], atol=1e-6)
    assert not torch.allclose(a[10:29], b[10:29])


def test_tiny_training_beats_the_unigram_entropy(corpus, tmp_path, helpers):
    cfg = from_dict(PretrainConfig, helpers.tiny_recipe(
        corpus, tmp_path / "run", total_tokens=512 * 400, eval_every=100, checkpoint_every=400))
    summary = train(cfg)
    entropy = unigram_entropy(TokenShards(corpus["tokens"]["a"]))
    assert summary["eval_loss"] < entropy - 0.5, (summary["eval_loss"], entropy)
    model = load_checkpoint(summary["export"])  # the HF export at the end loads
    assert model.config.rope_theta == 1_000_000 and (Path(summary["export"]) / "tokenizer.json").exists()
    assert Path(summary["plot"]).exists()


def test_stage_fractions_over_one(corpus, tmp_path, helpers):
    recipe = helpers.tiny_recipe(corpus, tmp_path)
    recipe["stages"][0]["fraction"] = 0.95
    with pytest.raises(ValueError, match="stage fractions sum to 1.05 > 1"):
        plan_stages(from_dict(PretrainConfig, recipe))


def test_window_beyond_positions_without_rope_change(corpus, tmp_path, helpers):
    recipe = helpers.tiny_recipe(corpus, tmp_path)
    del recipe["stages"][1]["max_position_embeddings"]
    with pytest.raises(ValueError, match="stage 's2': window 64 exceeds max_position_embeddings 32"):
        plan_stages(from_dict(PretrainConfig, recipe))


def test_resume_with_changed_model_shape_is_refused(corpus, tmp_path, helpers):
    recipe = helpers.tiny_recipe(corpus, tmp_path / "run", max_steps=3, checkpoint_every=3)
    train(from_dict(PretrainConfig, recipe))
    recipe["model"]["overrides"]["num_layers"] = 3
    with pytest.raises(checkpoint.ResumeError, match="num_layers: checkpoint 2 vs now 3"):
        train(from_dict(PretrainConfig, recipe))


def test_disk_full_while_checkpointing_keeps_the_previous_one(corpus, tmp_path, helpers, monkeypatch):
    from torch.distributed.checkpoint import FileSystemWriter

    recipe = helpers.tiny_recipe(corpus, tmp_path / "run", max_steps=4, checkpoint_every=2)
    real_write = FileSystemWriter.write_data

    def failing_write(self, plan, planner):  # the step-4 shards are written, then the disk is full
        done = real_write(self, plan, planner)
        if "step-00000004" in str(self.path):
            done.wait()
            raise OSError(28, "No space left on device")
        return done

    monkeypatch.setattr(FileSystemWriter, "write_data", failing_write)
    with pytest.raises(OSError, match="No space left"):
        train(from_dict(PretrainConfig, recipe))
    monkeypatch.undo()
    kept = checkpoint.list_checkpoints(tmp_path / "run")
    assert [p.name for p in kept] == ["step-00000002"]
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]
    meta = checkpoint.read_meta(kept[0])
    assert meta["step"] == 2 and "packer" in meta and (kept[0] / "rng-00000.safetensors").exists()
    assert any(n.endswith("exp_avg") for n in checkpoint.saved_tensors(kept[0])["optimizer"])


def test_activation_checkpointing_changes_memory_not_losses(corpus, tmp_path, helpers):
    runs = {}
    for ac in (False, True):
        recipe = helpers.tiny_recipe(corpus, tmp_path / f"ac{ac}", max_steps=4, checkpoint_every=100,
                                     activation_checkpointing=ac)
        train(from_dict(PretrainConfig, recipe))
        runs[ac] = _losses(tmp_path / f"ac{ac}")
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)
    export_free = checkpoint.latest(tmp_path / "acTrue")
    names = checkpoint.saved_tensors(export_free)["model"]
    assert "model.layers.0.attention.wqkv.weight" in names  # plain names, no wrapper prefixes


def test_rerunning_a_finished_run_keeps_its_export(corpus, tmp_path, helpers, capsys):
    """Resuming a finished run (with or without a smaller max_steps) trains nothing and leaves the export
    (last stage's RoPE, same weights) and summary.json (its held-out loss) as they were."""
    from safetensors.torch import load_file

    from ilm.train.run import stop_note

    recipe = helpers.tiny_recipe(corpus, tmp_path / "run", checkpoint_every=100, eval_every=1000)
    first = train(from_dict(PretrainConfig, recipe))
    final = Path(first["export"])
    config_before = json.loads((final / "config.json").read_text())
    weights_before = load_file(final / "model.safetensors")
    summary_before = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert config_before["rope_theta"] == 1_000_000 and config_before["max_position_embeddings"] == 64
    assert summary_before["eval_loss"] is not None
    for max_steps in (0, 100, 5):
        again = train(from_dict(PretrainConfig, {**recipe, "train": {**recipe["train"], "max_steps": max_steps}}),
                      resume="auto")
        assert json.loads((final / "config.json").read_text()) == config_before
        assert again["eval_loss"] == summary_before["eval_loss"] and again["steps"] == first["steps"]
        weights = load_file(final / "model.safetensors")
        assert all(torch.equal(weights[k], weights_before[k]) for k in weights_before)
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["eval_loss"] == summary_before["eval_loss"]
        err = capsys.readouterr().err
        if max_steps == 5:  # the command line's max_steps note says it (one line), not the trainer
            assert "nothing to do" not in err and "already finished" in stop_note(again, max_steps)
        else:
            assert err.count("nothing to do") == 1
