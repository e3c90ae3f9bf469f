"""What is applied to a model from outside: process groups, FSDP2 sharding, activation checkpointing and
compilation. The model file never knows about any of it; the same training loop runs as one CPU process,
as several gloo processes, or as `torchrun` over GPUs and nodes (NCCL)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ilm.model.internlm2 import InternLM2


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(device: str = "auto") -> World:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set); else a world of one."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return World(rank=rank, size=size, local_rank=local_rank, device=dev)


def shutdown_world(barrier: bool = True) -> None:
    """Leave the process group cleanly. A process that exits with gloo still up can abort in its
    destructor ("terminate called without an active exception"), so every launcher calls this at the end.
    After a failure pass barrier=False: the other ranks may never arrive. Reference cycles that still hold
    collective state (a failed checkpoint write's traceback, DCP's planners) are collected first, while the
    group is alive: freed after it is gone, they made gloo abort at exit now and then."""
    if dist.is_initialized():
        import gc

        gc.collect()
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def apply_fsdp(model: InternLM2, mixed_precision: torch.dtype | None = None) -> InternLM2:
    """FSDP2: shard every decoder layer, then the root (embeddings, final norm, output head).

    `reshard_after_forward` is the memory / communication trade of FSDP: True frees a layer's gathered
    (unsharded) weights right after its forward and all-gathers them again in the backward (ZeRO-3: one
    extra all-gather of the weights per micro-batch, about 1.5x the weight traffic of False); False keeps
    them from forward to backward (ZeRO-2-like: no second all-gather, but every GPU then holds the whole
    model's gathered weights at the peak: 14 GB in bf16 at 7B, 40 GB at 20B, which is what we cannot spare
    on 80 GB next to the activations). So the layers reshard (True); the root does not (False): its weights
    (output head, final norm) are the last used in the forward and the first in the backward, so freeing
    them would only gather them again at once. An int (reshard to a smaller group, e.g. within a node) is
    the option for multi-node runs where the inter-node all-gather dominates; not used yet. See docs/scale.md.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32) if mixed_precision else None
    kwargs = {"mp_policy": policy} if policy else {}
    for layer in model.model.layers:
        fully_shard(layer, reshard_after_forward=True, **kwargs)
    fully_shard(model, reshard_after_forward=False, **kwargs)
    return model


def apply_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Data parallel without sharding (`train.fsdp = false` on several processes): every process holds the
    whole model, and gradients are averaged across processes in the backward, so the replicas stay equal.

    PyTorch's `replicate` is DistributedDataParallel applied in place, like `fully_shard`: the module keeps
    its class, attributes (config, rope) and parameter names, so the training loops, checkpoints and the
    RoPE switch between stages work unchanged, and `set_requires_gradient_sync` is the same call as under
    FSDP2. DDP starts by broadcasting rank 0's weights (at the first forward), so the model may still be on
    the meta device here."""
    from torch.distributed._composable.replicate import replicate

    return replicate(model, device_id=device) if device.type == "cuda" else replicate(model)


def apply_activation_checkpointing(model: InternLM2) -> InternLM2:
    """Recompute each decoder layer in the backward pass instead of storing its activations."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    layers = model.model.layers
    for i, layer in enumerate(layers):
        layers[i] = checkpoint_wrapper(layer, preserve_rng_state=False)
    return model


def apply_compile(model: InternLM2, **compile_kwargs) -> InternLM2:
    """Compile each decoder layer on its own: every layer has the same graph, so one compilation is reused,
    and the embedding / loss stay eager (the fused loss has its own backward)."""
    for layer in model.model.layers:
        layer.compile(**compile_kwargs)
    return model


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.AVG if value.device.type == "cuda" else dist.ReduceOp.SUM)
        if value.device.type != "cuda":
            value /= dist.get_world_size()
    return value
