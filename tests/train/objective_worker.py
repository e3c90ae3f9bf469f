"""Run under `torchrun --nproc_per_node 2` by test_objective_scale.py: train each job of a JSON list with the
real trainers (one process group for all of them), counting the reduce-scatters of every optimizer step,
then check `run.sync_gradients` on a DDP-wrapped module. Rank 0 writes the results as JSON.

usage: objective_worker.py JOBS.json OUT.json
job: {"name", "stage": "pretrain" | "sft" | "rm", "config": {...}}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ilm.config import from_dict
from ilm.train import pretrain, reward, run, sft
from ilm.train.distributed import init_world, shutdown_world

STAGES = {"pretrain": (pretrain, pretrain.PretrainConfig), "sft": (sft, sft.SFTConfig), "rm": (reward, reward.RMConfig)}
COUNT = {"reduce_scatter": 0}


def _counted(fn):
    def wrapper(*args, **kwargs):
        COUNT["reduce_scatter"] += 1
        return fn(*args, **kwargs)
    return wrapper


for _name in ("reduce_scatter_tensor", "reduce_scatter_single"):  # what FSDP2 calls, whichever this torch has
    if hasattr(dist, _name):
        setattr(dist, _name, _counted(getattr(dist, _name)))


def train_job(job: dict) -> dict:
    """Train one job; per step, the reduce-scatters issued inside `run.accumulate`, and the FSDP units."""
    module, config_cls = STAGES[job["stage"]]
    real_accumulate = getattr(module, "accumulate", None)
    steps: list[int] = []
    units: list[int] = []

    def accumulate(model, *args, **kwargs):
        from torch.distributed.fsdp import FSDPModule

        units.append(sum(isinstance(m, FSDPModule) for m in model.modules()))
        before = COUNT["reduce_scatter"]
        out = real_accumulate(model, *args, **kwargs)
        steps.append(COUNT["reduce_scatter"] - before)
        return out

    if real_accumulate is not None:  # (absent from the trainers before the fix: train them as they are)
        module.accumulate = accumulate
    before = COUNT["reduce_scatter"]
    try:
        summary = module.train(from_dict(config_cls, job["config"]), resume="never")
    finally:
        if real_accumulate is not None:
            module.accumulate = real_accumulate
    return {"reduce_scatters": steps, "fsdp_units": units, "run_reduce_scatters": COUNT["reduce_scatter"] - before,
            "export": summary.get("export")}


def ddp_check(world) -> dict:
    """Two micro-batches through `run.accumulate` on a DDP-wrapped module: one all-reduce per step (a comm
    hook counts them), and the gradient of the global count-weighted mean (compared with a plain module)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    from ilm.train.distributed import World

    torch.manual_seed(0)
    plain = torch.nn.Linear(4, 3)
    ddp = DistributedDataParallel(torch.nn.Linear(4, 3))
    ddp.module.load_state_dict(plain.state_dict())
    calls = []

    def hook(state, bucket):
        calls.append(1)
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(dist.group.WORLD, hook)
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(n, 4, generator=gen) for n in (9, 1, 2, 5)]  # rank r: micro-batches 2r, 2r + 1

    def mean_loss_of(model):
        return lambda x: (model(x) ** 2).sum(-1).mean()

    mine = data[2 * world.rank : 2 * world.rank + 2]
    loss, count = run.accumulate(ddp, mine, [len(x) for x in mine], mean_loss_of(ddp), world)
    ref_loss, _ = run.accumulate(plain, data, [len(x) for x in data], mean_loss_of(plain), World(0, 1, 0, world.device))
    diff = max(float((a.grad - b.grad).abs().max()) for a, b in zip(ddp.module.parameters(), plain.parameters()))
    return {"allreduces": len(calls), "loss": loss, "count": count, "ref_loss": ref_loss, "grad_diff": diff}


def replicate_check(world) -> dict:
    """`apply_ddp` (PyTorch's `replicate`, DDP in place): inside `sync_gradients(model, False)` a backward
    leaves each process's own gradient (no all-reduce); with sync on, the gradients are averaged."""
    from ilm.train.distributed import apply_ddp

    torch.manual_seed(0)
    model = apply_ddp(torch.nn.Linear(4, 3), world.device)
    x = torch.full((2, 4), float(world.rank + 1))
    out = {}
    for name, enabled in (("no_sync", False), ("sync", True)):
        model.zero_grad(set_to_none=True)
        with run.sync_gradients(model, enabled):
            (model(x) ** 2).sum().backward()
        grads = [torch.zeros_like(model.weight.grad) for _ in range(world.size)]
        dist.all_gather(grads, model.weight.grad.contiguous())
        out[name] = float((grads[0] - grads[1]).abs().max())
    return out


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    world = init_world("cpu")
    results = {job["name"]: train_job(job) for job in jobs}
    results["ddp"] = ddp_check(world) if hasattr(run, "accumulate") else {}
    results["replicate"] = replicate_check(world) if hasattr(run, "sync_gradients") else {}
    if world.is_main:
        Path(sys.argv[2]).write_text(json.dumps(results))
    shutdown_world()


if __name__ == "__main__":
    main()
