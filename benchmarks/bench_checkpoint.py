"""Training checkpoint save and load time, `small` preset under FSDP2 with 2 processes (torchrun, gloo on CPU):

- ilm's sharded checkpoint (`ilm.train.checkpoint`: torch.distributed.checkpoint, every rank writes and
  reads its own shards, RNG and metadata beside them, atomic rename by rank 0);
- the gathered save it replaced, inline here as the baseline: the full model and optimiser state gathered
  to rank 0 (`get_state_dict(full_state_dict=True, cpu_offload=True)`), one `torch.save` there, fsync and
  rename; loading it: `torch.load` on rank 0, broadcast to the others by `set_state_dict`.

Both hold the same state (model, AdamW moments after one step). Each is timed `REPEATS` times, alternating,
after a barrier, as the slowest rank sees it; the median is reported.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"
REPEATS = 3 if QUICK else 7


def _gathered_save(run_dir: Path, step: int, model, optimizer) -> None:
    """The old format: gather everything to rank 0, which alone writes one pickle."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer,
                                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        final = run_dir / f"step-{step:08d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=run_dir))
        with open(tmp / "state.pt", "wb") as f:
            torch.save({"step": step, "model": model_state, "optimizer": optim_state}, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)


def _gathered_load(path: Path, model, optimizer) -> None:
    """Rank 0 reads the pickle and broadcasts. Model and optimiser in two calls: one `set_state_dict` call
    with an empty model dict on the other ranks (what the old loader did) skips the model there and hangs."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False) if dist.get_rank() == 0 else {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, state.get("model", {}), options=options)
    set_optimizer_state_dict(model, optimizer, state.get("optimizer", {}), options=options)


def _timed(fn) -> float:
    import torch.distributed as dist

    dist.barrier()
    t = time.perf_counter()
    fn()
    took = torch.tensor([time.perf_counter() - t])
    dist.all_reduce(took, op=dist.ReduceOp.MAX)
    return float(took)


def worker(out: str, root: str) -> None:
    """One rank (under torchrun): build the sharded model, take one step, time both formats."""
    import torch.distributed as dist

    from ilm.model import build_model, get_preset
    from ilm.train import checkpoint
    from ilm.train.distributed import apply_fsdp, init_world, shutdown_world
    from ilm.train.optim import OptimConfig, build_optimizer
    from ilm.train.run import model_shape

    world = init_world("cpu")
    config = get_preset("small")
    model = apply_fsdp(build_model(config, seed=0))
    optimizer = build_optimizer(model, OptimConfig())
    ids = torch.randint(3, config.vocab_size, (2, 256), generator=torch.Generator().manual_seed(world.rank))
    model(ids, labels=ids).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    shape = model_shape(config)
    ours, theirs = Path(root) / "dcp", Path(root) / "gathered"
    if world.is_main:
        ours.mkdir()
        theirs.mkdir()
    dist.barrier()
    times: dict[str, list[float]] = {"dcp_save": [], "dcp_load": [], "gathered_save": [], "gathered_load": []}
    for i in range(REPEATS):
        times["dcp_save"].append(_timed(lambda i=i: checkpoint.save(ours, i, model, optimizer, {"model_config": shape},
                                                                    keep_last=1)))
        times["gathered_save"].append(_timed(lambda i=i: _gathered_save(theirs, i, model, optimizer)))
        times["dcp_load"].append(_timed(lambda i=i: checkpoint.load(ours / f"step-{i:08d}", model, optimizer, shape)))
        times["gathered_load"].append(_timed(lambda i=i: _gathered_load(theirs / f"step-{i:08d}", model, optimizer)))
    if world.is_main:
        last = REPEATS - 1
        sizes = {"dcp_bytes": sum(p.stat().st_size for p in (ours / f"step-{last:08d}").iterdir()),
                 "gathered_bytes": (theirs / f"step-{last:08d}" / "state.pt").stat().st_size}
        Path(out).write_text(json.dumps({"times": times, **sizes,
                                         "params": sum(p.numel() for p in model.parameters())}))
    shutdown_world()


def main() -> dict:
    with tempfile.TemporaryDirectory(prefix="ilm-bench-ckpt-") as tmp:
        out = Path(tmp) / "result.json"
        (Path(tmp) / "ckpt").mkdir()
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "benchmarks.bench_checkpoint",
               "--worker", str(out), str(Path(tmp) / "ckpt")]
        subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).resolve().parents[1])
        raw = json.loads(out.read_text())
    med = {k: statistics.median(v) for k, v in raw["times"].items()}
    results = {
        "preset": "small", "processes": 2, "backend": "gloo (CPU)", "repeats": REPEATS,
        "parameters": raw["params"], "dcp_bytes": raw["dcp_bytes"], "gathered_bytes": raw["gathered_bytes"],
        **{f"{k}_s": round(v, 4) for k, v in med.items()},
        "save_speedup": round(med["gathered_save"] / med["dcp_save"], 2),
        "load_speedup": round(med["gathered_load"] / med["dcp_load"], 2),
        "all_times_s": {k: [round(x, 4) for x in v] for k, v in raw["times"].items()},
    }
    print(f"small preset ({raw['params']:,} parameters), 2 processes, gloo on CPU, median of {REPEATS}")
    print(f"{'':22}{'save s':>10}{'load s':>10}{'bytes':>14}")
    print(f"{'ilm sharded (DCP)':22}{med['dcp_save']:10.3f}{med['dcp_load']:10.3f}{raw['dcp_bytes']:14,}")
    print(f"{'gathered + torch.save':22}{med['gathered_save']:10.3f}{med['gathered_load']:10.3f}"
          f"{raw['gathered_bytes']:14,}")
    print(f"gathered / sharded: save {results['save_speedup']}x, load {results['load_speedup']}x")
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
