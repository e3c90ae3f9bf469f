"""The final HF export of a training model, streamed: the only place the whole model is ever gathered.

Training checkpoints stay sharded (`checkpoint.py`). The export needs whole tensors, but never the whole
model at once: tensors are all-gathered one at a time, in the order of the state dict, and rank 0 writes
each safetensors shard (`max_shard_bytes`) as soon as its group is complete, then drops it. Peak memory on
rank 0 is one shard's worth, on the other ranks one tensor. The layout is `ilm.model.hf`'s: `config.json`,
`generation_config.json`, `model.safetensors` or `model-0000i-of-0000n.safetensors` + index; the directory
is written into a temporary sibling and renamed into place when complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from ilm.model.config import ModelConfig
from ilm.model.hf import (
    DEFAULT_MAX_SHARD_BYTES,
    _check_names_and_shapes,
    _expected_shapes,
    _replace_dir,
    write_config_files,
)
from ilm.train.checkpoint import all_ranks_ok


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor: all-gathered when it is a DTensor shard (a collective: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as each rank holds it (DTensor shards under FSDP; nothing is gathered) under
    plain names (no activation-checkpointing or compile wrapper prefixes)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model)


def tokenizer_files(tokenizer_dir: str | Path | None) -> dict[str, str | bytes]:
    if not tokenizer_dir:
        return {}
    return {p.name: p.read_bytes() for p in Path(tokenizer_dir).iterdir() if p.is_file()}


def shard_groups(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Names in order, cut into groups of at most `max_bytes` (a bigger tensor gets a group of its own)."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, n in sizes.items():
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    return groups


def export_hf(
    state: dict[str, torch.Tensor], config: ModelConfig, path: str | Path,
    extra_files: dict[str, str | bytes] | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write the InternLM2 checkpoint of `state` (plain or DTensor-sharded, same names on every rank) to
    `path` on rank 0, gathering one shard-sized group of tensors at a time. Every rank must call it."""
    from safetensors.torch import save_file

    path = Path(path)
    _check_names_and_shapes(state, _expected_shapes(config, "internlm2"), "the model to export")
    dtype = next(iter(state.values())).dtype
    sizes = {k: v.numel() * dtype.itemsize for k, v in state.items()}
    groups = shard_groups(sizes, max_shard_bytes)
    names = (["model.safetensors"] if len(groups) == 1
             else [f"model-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)])
    main = not dist.is_initialized() or dist.get_rank() == 0
    tmp, error = None, None
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    for group, name in zip(groups, names):
        tensors = {}
        for key in group:  # collectives in the same order on every rank, even after a failed write
            whole = full_tensor(state[key]).detach()
            if key == "output.weight" and config.norm_head:  # bake NormHead in, as hf.save_checkpoint does
                whole = torch.nn.functional.normalize(whole.float(), dim=1)
            if main:
                tensors[key] = whole.to("cpu", dtype).contiguous()
            del whole
        if main and error is None:
            try:
                save_file(tensors, tmp / name, metadata={"format": "pt"})
            except Exception as err:  # noqa: BLE001 - re-raised below, once every rank agreed
                error = err
        del tensors
    if main and error is None:
        try:
            write_config_files(tmp, config, "internlm2", dtype, extra_files)
            if len(groups) > 1:
                weight_map = {k: n for group, n in zip(groups, names) for k in group}
                index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": dict(sorted(weight_map.items()))}
                (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
            for file, content in (extra_files or {}).items():
                target = tmp / file
                target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
            _replace_dir(tmp, path)
        except Exception as err:  # noqa: BLE001 - re-raised below, once every rank agreed
            error = err
    if not all_ranks_ok(error is None):
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if error is not None:
            raise error
        raise RuntimeError(f"export to {path} failed on another rank (see its log)")
    return path
