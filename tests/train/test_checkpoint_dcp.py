"""Sharded (DCP) training checkpoints: written by every rank, resumed at another world size, atomic, never
unpickled; and the streamed HF export."""

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ilm.config import from_dict
from ilm.model import build_model, get_preset
from ilm.model.hf import load_checkpoint, read_state_dict
from ilm.train import checkpoint
from ilm.train.optim import OptimConfig, build_optimizer
from ilm.train.pretrain import PretrainConfig, plan_stages, train
from ilm.train.run import model_shape

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def _run(recipe: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "ilm.cli", "pretrain", str(recipe), *extra]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_process_checkpoint_resumes_with_one_and_two_processes(corpus, tmp_path, helpers):
    # 21 steps (18 + 2 + 1 over three stages), a checkpoint every 5 and at each stage's end
    short = {"total_tokens": 512 * 20, "checkpoint_every": 5, "keep_last": 10, "eval_every": 1000}
    straight = tmp_path / "straight"
    _run(helpers.write_recipe(tmp_path / "s.toml", helpers.tiny_recipe(corpus, straight, **short)), 2)
    reference = _losses(straight)
    assert sorted(reference) == list(range(1, 22))

    mid = straight / "step-00000010"  # mid-stage: the packer's position is part of the state
    shards = {p.name: p.stat().st_size for p in mid.glob("*.distcp")}
    assert sorted(shards) == ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shards ...
    assert max(shards.values()) < 0.7 * sum(shards.values())  # ... and neither holds the whole state
    assert (mid / "rng-00000.safetensors").exists() and (mid / "rng-00001.safetensors").exists()
    assert not list(mid.glob("*.pt"))

    for nproc in (2, 1):
        run_dir = tmp_path / f"resume{nproc}"
        shutil.copytree(mid, run_dir / mid.name)
        recipe = helpers.write_recipe(tmp_path / f"r{nproc}.toml", helpers.tiny_recipe(corpus, run_dir, **short))
        done = _run(recipe, nproc)
        assert f"resumed from {run_dir / mid.name} at step 10" in done.stdout
        resumed = _losses(run_dir)
        assert sorted(resumed) == list(range(11, 22))
        worst = max(abs(resumed[s] - reference[s]) / reference[s] for s in resumed)
        assert worst < 1e-4, (nproc, worst)  # stated tolerance: 1e-4 relative (float reduction order differs)

    # the streamed export of the 2-process run is exactly the final sharded checkpoint's model
    cfg = from_dict(PretrainConfig, helpers.tiny_recipe(corpus, straight, **short))
    final_cfg = plan_stages(cfg)[-1].model_config
    model = build_model(final_cfg, seed=1)
    rest = checkpoint.load(straight / "step-00000021", model, build_optimizer(model, OptimConfig()),
                           model_shape(plan_stages(cfg)[0].model_config))
    assert rest["step"] == 21
    exported = load_checkpoint(straight / "final")
    assert exported.config.rope_theta == final_cfg.rope_theta
    for name, value in model.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value), name


def test_keep_last_and_a_failed_write_leaves_the_previous_checkpoints(corpus, tmp_path, helpers, monkeypatch):
    recipe = helpers.tiny_recipe(corpus, tmp_path / "run", max_steps=5, checkpoint_every=1, keep_last=2,
                                 eval_every=1000)
    real, calls = checkpoint._write_rng, []

    def failing(path):  # the 5th checkpoint's shards and index are written, then its RNG file fails
        calls.append(path)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        real(path)

    monkeypatch.setattr(checkpoint, "_write_rng", failing)
    with pytest.raises(OSError, match="No space left"):
        train(from_dict(PretrainConfig, recipe))
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step-00000003", "step-00000004"]
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith((".", "step-"))) == [
        "step-00000003", "step-00000004"]  # no temporary or half-written directory left
    summary = train(from_dict(PretrainConfig, recipe))  # and the run continues from step 4
    assert summary["steps"] == 5 and checkpoint.latest(run_dir).name == "step-00000005"


class _Payload:
    """A pickle that, when loaded, runs a shell command creating `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


_SAVED: dict[str, tuple] = {}


def _saved(corpus, helpers, tmp_path_factory) -> tuple[dict, Path]:
    """One 2-step checkpoint shared by the crafted-pickle cases (each tampers with its own copy)."""
    if not _SAVED:
        root = tmp_path_factory.mktemp("crafted")
        recipe = helpers.tiny_recipe(corpus, root / "run", max_steps=2, checkpoint_every=2, eval_every=1000)
        train(from_dict(PretrainConfig, recipe))
        _SAVED["run"] = recipe, checkpoint.latest(root / "run")
    return _SAVED["run"]


def _byte_item(path: Path):
    """(file, offset, length) of a non-tensor value (an optimiser hyper-parameter) inside the DCP shards."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    md = checkpoint.read_metadata(path)
    fqn = next(k for k, v in md.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata))
    info = next(v for k, v in md.storage_data.items() if k.fqn == fqn)
    return path / info.relative_path, info.offset, info.length


@pytest.mark.parametrize("target", ["state.pt", ".metadata", "distcp-value", "rng-00000.safetensors", "meta.json"])
def test_a_crafted_pickle_in_a_checkpoint_never_runs(corpus, helpers, tmp_path_factory, tmp_path, target):
    recipe, original = _saved(corpus, helpers, tmp_path_factory)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker), protocol=2)
    pickle.loads(payload)  # the payload is live: loading it with pickle runs the command ...
    assert marker.exists()
    marker.unlink()

    run_dir = tmp_path / "run"
    ckpt = run_dir / original.name
    shutil.copytree(original, ckpt)
    if target == "distcp-value":  # overwrite one stored value in place, so DCP's offsets still point at it
        file, offset, length = _byte_item(ckpt)
        assert len(payload) <= length
        raw = bytearray(file.read_bytes())
        raw[offset:offset + length] = payload.ljust(length, b"\0")
        file.write_bytes(bytes(raw))
        with pytest.raises(Exception):  # noqa: B017 - DCP's own planner would run it (torch.load(weights_only=False))
            torch.load(io.BytesIO(raw[offset:offset + length]), weights_only=False)
        assert marker.exists()  # ... and so does the way DCP's default planner reads that value
        marker.unlink()
    else:
        (ckpt / target).write_bytes(payload)

    cfg = from_dict(PretrainConfig, {**recipe, "run_dir": str(run_dir), "train": {**recipe["train"], "max_steps": 3}})
    if target == "state.pt":  # not part of the format: ignored
        assert train(cfg)["steps"] == 3
    else:
        named = file.name if target == "distcp-value" else target
        with pytest.raises(checkpoint.ResumeError, match=named.replace(".", r"\.")):
            train(cfg)
    assert not marker.exists()


def test_export_streams_one_shard_at_a_time(tmp_path, monkeypatch):
    import safetensors.torch

    from ilm.train.export import export_hf

    config = get_preset("tiny")
    model = build_model(config, seed=3)
    written = []
    real = safetensors.torch.save_file

    def spy(tensors, filename, metadata=None):
        written.append(sum(t.numel() * t.element_size() for t in tensors.values()))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", spy)
    limit = 200_000
    out = export_hf(dict(model.state_dict()), config, tmp_path / "hf", max_shard_bytes=limit)
    total = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    biggest = max(v.numel() * v.element_size() for v in model.state_dict().values())
    assert len(written) > 2 and sum(written) == total
    assert max(written) <= max(limit, biggest)  # one shard-sized group in memory, never the whole model
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(written)
    loaded = read_state_dict(out)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


_ONE_RANK_FAILS = '''
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ilm.model import build_model, get_preset
from ilm.train import checkpoint
from ilm.train.distributed import apply_fsdp, init_world, shutdown_world
from ilm.train.optim import OptimConfig, build_optimizer

world = init_world("cpu")
run_dir = Path(sys.argv[1])
model = apply_fsdp(build_model(get_preset("tiny"), seed=0))
optimizer = build_optimizer(model, OptimConfig())
checkpoint.save(run_dir, 1, model, optimizer, {"model_config": {}})
real = checkpoint._write_rng


def failing(path):
    if world.rank == 1:
        raise OSError(28, "No space left on device")
    real(path)


checkpoint._write_rng = failing
try:
    checkpoint.save(run_dir, 2, model, optimizer, {"model_config": {}})
    print(f"rank {world.rank}: no error")
except OSError as err:
    print(f"rank {world.rank}: OSError {err}")
except RuntimeError as err:
    print(f"rank {world.rank}: RuntimeError {err}")
dist.barrier()
if world.rank == 0:
    print("left:", sorted(p.name for p in run_dir.iterdir()))
shutdown_world()
'''


def test_a_write_failing_on_one_rank_fails_on_every_rank(tmp_path):
    script = tmp_path / "one_rank_fails.py"
    script.write_text(_ONE_RANK_FAILS)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path / "run")],
                          env=ENV, capture_output=True, text=True, timeout=200, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 1: OSError [Errno 28] No space left on device" in done.stdout
    assert "rank 0: RuntimeError checkpoint" in done.stdout and "another rank failed" in done.stdout
    assert "left: ['step-00000001']" in done.stdout  # step 2 never appeared, its temporary dir is gone


def test_an_old_pickled_checkpoint_is_named_not_loaded_or_skipped(tmp_path):
    old = tmp_path / "run" / "step-00000007"
    old.mkdir(parents=True)
    torch.save({"step": 7}, old / "state.pt")
    assert checkpoint.latest(tmp_path / "run") == old  # resume=auto finds it rather than starting over ...
    model = build_model(get_preset("tiny"))
    with pytest.raises(checkpoint.ResumeError, match="older ilm"):  # ... and says why it cannot continue
        checkpoint.load(old, model, build_optimizer(model, OptimConfig()), {})
