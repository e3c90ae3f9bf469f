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
        self.v_head = nn.Linear(backbone.config.hidden_size, 1, bias=False)
        backbone.output.requires_grad_(False)  # the LM head is not used: no gradient, no optimiser state
        device = backbone.model.norm.weight.device
        if device.type != "meta":
            gen = torch.Generator(device=device).manual_seed(seed)
            std = init_std if init_std is not None else 1.0 / (backbone.config.hidden_size + 1) ** 0.5
            nn.init.normal_(self.v_head.weight, std=std, generator=gen)
            self.v_head.to(device=device, dtype=backbone.model.norm.weight.dtype)

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


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[RewardModel, dict]:
    """A reward model and its reward config from a `save_reward_model` directory."""
    from safetensors.torch import load_file

    from ilm.model.hf import load_checkpoint

    path = Path(path)
    if not (path / HEAD_FILE).exists():
        raise FileNotFoundError(f"{path}: no {HEAD_FILE}; is this a reward model export (`ilm rm train`)?")
    backbone = load_checkpoint(path, device=device)
    model = RewardModel(backbone)
    weight = load_file(path / HEAD_FILE)["v_head.weight"]
    if tuple(weight.shape) != (1, backbone.config.hidden_size):
        raise ValueError(f"{path / HEAD_FILE}: v_head.weight has shape {tuple(weight.shape)}, "
                         f"expected (1, {backbone.config.hidden_size})")
    with torch.no_grad():
        model.v_head.weight.copy_(weight)
    return model, json.loads((path / CONFIG_FILE).read_text())
