"""The conditional reward model: the InternLM2 backbone plus a scalar head read at an appended reward token.

The base model file stays a language model; the reward model wraps it. Each scored sequence ends with
an explicit reward token (one of the tokenizer's spare tokens, as the released InternLM2 reward models
do with `[UNUSED_TOKEN_130]`), and the head reads the final-norm hidden state there. The backbone's LM
head is kept (unused, it gets no gradient) so that the backbone half of an export is an ordinary HF
InternLM2 checkpoint that every other stage loads.

Export layout (a directory): the HF InternLM2 checkpoint of the backbone (+ tokenizer files), plus
`reward_head.safetensors` (`v_head.weight`, shape (1, hidden)) and `reward_config.json` (reward token,
condition table, window). `load_reward_model(dir)` reads all three.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ilm.model import AttnBatch, InternLM2

REWARD_TOKEN = "[UNUSED_TOKEN_130]"  # the released reward models' choice (id 92527 at the full vocabulary)
HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_config.json"


class RewardModel(nn.Module):
    """backbone (InternLM2) -> hidden states -> `v_head` at each sequence's reward-token position."""

    def __init__(self, backbone: InternLM2, init_std: float | None = None, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.init_std = init_std if init_std is not None else 1.0 / (backbone.config.hidden_size + 1) ** 0.5
        self.seed = seed
        norm = backbone.model.norm.weight
        with torch.device(norm.device):
            self.v_head = nn.Linear(backbone.config.hidden_size, 1, bias=False, dtype=norm.dtype)
        backbone.output.requires_grad_(False)  # the LM head is not used: no gradient, no optimiser state
        if norm.device.type != "meta":
            self.init_head()

    @torch.no_grad()
    def init_head(self) -> None:
        """N(0, init_std) from `seed`, written into this process's part of the head (whole or sharded): the
        head is one row, so drawing it whole is free."""
        from ilm.model.init import local_part

        local, start = local_part(self.v_head.weight)
        gen = torch.Generator(device=local.device).manual_seed(self.seed)
        full = torch.empty(self.v_head.weight.shape, device=local.device, dtype=local.dtype)
        full.normal_(0.0, self.init_std, generator=gen)
        local.copy_(full[start : start + local.shape[0]])

    @property
    def config(self):
        return self.backbone.config

    def forward(
        self,
        input_ids: torch.Tensor,
        reward_index: torch.Tensor,
        positions: torch.Tensor | None = None,
        batch: AttnBatch | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T); reward_index (N, 2) = (row, column) of each reward token -> rewards (N,), fp32."""
        hidden = self.backbone(input_ids, positions, batch, return_hidden=True)
        picked = hidden[reward_index[:, 0], reward_index[:, 1]]
        return self.v_head(picked).squeeze(-1).float()


def reward_files(head_weight: torch.Tensor, meta: dict) -> dict[str, str | bytes]:
    """The two files an export adds to the backbone's HF checkpoint: head weights and reward config."""
    from safetensors.torch import save as save_bytes

    head = {"v_head.weight": head_weight.detach().to("cpu", torch.float32).contiguous()}
    return {HEAD_FILE: save_bytes(head, metadata={"format": "pt"}),
            CONFIG_FILE: json.dumps({"architectures": ["InternLM2ForRewardModel"], **meta}, indent=2) + "\n"}


def save_reward_model(
    model: RewardModel, path: str | Path, meta: dict, tokenizer_dir: str | Path | None = None
) -> Path:
    """HF export with the head, of an unsharded model: backbone checkpoint + head weights + reward config
    (one atomic directory). Training exports stream from the sharded model instead (`reward.export`)."""
    from ilm.model.hf import save_checkpoint

    extras: dict[str, str | bytes] = {}
    if tokenizer_dir:
        extras = {p.name: p.read_bytes() for p in Path(tokenizer_dir).iterdir() if p.is_file()}
    extras.update(reward_files(model.v_head.weight, meta))
    return save_checkpoint(model.backbone, path, extra_files=extras)


def reward_model_on_meta(path: str | Path, dtype: torch.dtype | None = None) -> RewardModel:
    """The reward model of a `save_reward_model` directory on the meta device (shapes only; the checkpoint's
    dtype unless given): shard or replicate it, then `load_reward_weights` fills each process's part."""
    from ilm.model import build_model
    from ilm.model.hf import _Files, read_config

    path = Path(path)
    if not (path / HEAD_FILE).exists():
        raise FileNotFoundError(f"{path}: no {HEAD_FILE}; is this a reward model export (`ilm rm train`)?")
    return RewardModel(build_model(read_config(path)[0], device="meta", dtype=dtype or _Files(path).dtype()))


@torch.no_grad()
def load_reward_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Fill an allocated reward model (or anything with its `backbone` and `v_head`: the PPO critic), whole or
    sharded by FSDP2, from a `save_reward_model` directory in place: each process reads only its rows."""
    from ilm.model.hf import load_weights

    path = Path(path)
    load_weights(model.backbone, path)
    _load_head_rows(model, path)
    return model


@torch.no_grad()
def _load_head_rows(model: nn.Module, path: Path) -> None:
    from safetensors import safe_open

    from ilm.model.init import local_part

    with safe_open(path / HEAD_FILE, framework="pt") as f:
        if "v_head.weight" not in set(f.keys()):
            raise ValueError(f"{path / HEAD_FILE}: no v_head.weight")
        head = f.get_slice("v_head.weight")
        shape = tuple(head.get_shape())
        if shape != tuple(model.v_head.weight.shape):
            raise ValueError(f"{path / HEAD_FILE}: v_head.weight has shape {shape}, "
                             f"expected {tuple(model.v_head.weight.shape)}")
        local, start = local_part(model.v_head.weight)
        if local.shape[0]:
            local.copy_(head[start : start + local.shape[0]].to(local.dtype))


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[RewardModel, dict]:
    """A reward model (whole, on one process) and its reward config from a `save_reward_model` directory."""
    path = Path(path)
    model = reward_model_on_meta(path).to_empty(device=device)
    load_reward_weights(model, path)
    return model, json.loads((path / CONFIG_FILE).read_text())


def load_head(model: RewardModel, path: str | Path) -> None:
    """Copy an export's `reward_head.safetensors` into `model.v_head`, this process's part (a fine-tune
    continues the old head)."""
    _load_head_rows(model, Path(path))
