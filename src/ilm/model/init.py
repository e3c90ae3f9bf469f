"""Filling parameters one shard at a time, so that no process ever holds a whole one.

A parameter is either whole (one process, DDP) or an FSDP2 `DTensor` sharded on dim 0, of which this process
holds a contiguous run of rows. `local_part` says which; the random initialisation and the checkpoint loader
(`ilm.model.hf.load_weights`) write only those rows.

Random init is defined per row block: every parameter is cut into at most `INIT_BLOCKS` blocks of rows (the
cut depends on the parameter's shape only), and each block draws from its own generator seeded by
(seed, parameter name, block). A process draws the blocks that overlap its rows and keeps the overlap, so the
values are the same whatever the number of processes, and the most it allocates beyond its shard is one
block (1/256 of the parameter).
"""

from __future__ import annotations

import hashlib
import re

import torch

INIT_BLOCKS = 256
_WRAPPERS = re.compile(r"(_checkpoint_wrapped_module|_orig_mod|_fsdp_wrapped_module)\.")


def canonical_name(name: str) -> str:
    """The parameter name without the prefixes that activation checkpointing / compile wrappers insert."""
    return _WRAPPERS.sub("", name)


def local_part(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the tensor this process holds, index of its first row in the whole parameter).

    Under `torch.no_grad()` the returned tensor is the shard's own storage: writes to it are writes to the
    parameter."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(param, DTensor):
        return param, 0
    placements = param.placements
    if len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise ValueError(f"only dim-0 sharding (FSDP2) is supported, not {placements}")
    local = param.to_local()
    rows, parts = param.shape[0], param.device_mesh.size()
    per = -(-rows // parts)  # torch.chunk's split, as FSDP2 uses
    start = min(param.device_mesh.get_local_rank() * per, rows)
    if local.shape[0] != min(rows, start + per) - start:
        raise ValueError(f"unexpected shard shape {tuple(local.shape)} of {tuple(param.shape)}")
    return local, start


def _block_seed(seed: int, name: str, block: int) -> int:
    digest = hashlib.sha256(f"{seed}/{name}/{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@torch.no_grad()
def normal_rows_(out: torch.Tensor, start: int, full_rows: int, name: str, std: float, seed: int) -> torch.Tensor:
    """Fill `out` with rows start..start+len(out) of the block-seeded N(0, std) init of a parameter of
    `full_rows` rows (`out.shape[1:]` per row)."""
    if out.shape[0] == 0:
        return out
    per = -(-full_rows // min(full_rows, INIT_BLOCKS))
    end = start + out.shape[0]
    for b in range(start // per, -(-end // per)):
        lo, hi = b * per, min(full_rows, (b + 1) * per)
        gen = torch.Generator(device=out.device).manual_seed(_block_seed(seed, name, b))
        block = torch.empty((hi - lo, *out.shape[1:]), device=out.device, dtype=out.dtype)
        block.normal_(0.0, std, generator=gen)
        a, z = max(start, lo), min(end, hi)
        out[a - start : z - start].copy_(block[a - lo : z - lo])
    return out


@torch.no_grad()
def init_normal_(param: torch.Tensor, name: str, std: float, seed: int) -> None:
    """Block-seeded N(0, std) init of this process's part of `param` (see the module docstring)."""
    local, start = local_part(param)
    normal_rows_(local, start, param.shape[0], canonical_name(name), std, seed)
