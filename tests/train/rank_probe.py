"""Run under torchrun by tests/train/test_scale.py: looks inside every process of a training run.

    rank_probe.py params OUT pretrain.json
        train; at each checkpoint every process writes its own copy of the weights to OUT/rank{r}-step{s}.pt
    rank_probe.py ppo OUT ppo.json
        the same for `ilm rlhf ppo` (actor, reference, critic, reward model) up to its optimiser; the
        assembled actor and critic are compared with the actor and reward-model exports
    rank_probe.py setup OUT pretrain.json sft.json
        set up pretraining (from scratch) and SFT (from an HF checkpoint), recording the largest tensor
        storage each process touches until the optimiser is built; writes OUT/setup-rank{r}.json with that
        size and how far the assembled weights are from the expected ones
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ilm.config import from_dict
from ilm.train.distributed import shutdown_world


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def params(out: Path, recipe: str) -> None:
    from ilm.train import pretrain

    original = pretrain.checkpoint.save

    def save(run_dir, step, model, optimizer, *args, **kwargs):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, out / f"rank{_rank()}-step{step}.pt")
        return original(run_dir, step, model, optimizer, *args, **kwargs)

    pretrain.checkpoint.save = save
    pretrain.train(from_dict(pretrain.PretrainConfig, json.loads(Path(recipe).read_text())), resume="never")


class Largest(TorchDispatchMode):
    """The largest tensor storage any op reads or writes, counting memory this process holds: a view on a
    memory-mapped file (safetensors) costs only the pages it touches, so it is not counted; what is copied
    out of it is."""

    def __init__(self):
        super().__init__()
        self.bytes, self.op = 0, ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor):
                held = _held_bytes(t)
                if held > self.bytes and not _file_backed(t):
                    self.bytes, self.op = held, str(func)
        return out


def _held_bytes(t: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.to_local()
    if t.device.type == "meta":
        return 0
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


def _file_backed(t: torch.Tensor) -> bool:
    """Whether the tensor's memory lies in a mapping of a file (from /proc/self/maps)."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.to_local()
    ptr = t.untyped_storage().data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= ptr < hi:
                return True
    return False


class SetupDone(Exception):
    pass


def _probe_stage(module, config_cls, recipe: str, expected) -> dict:
    """Run `module.train` up to its optimiser, under `Largest`; then compare the whole weights to `expected()`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    mode = Largest()
    original = module.build_optimizer
    found: dict = {}

    def stop(model, cfg):
        mode.__exit__(None, None, None)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        want = expected()
        found["largest_bytes"], found["largest_op"] = mode.bytes, mode.op
        found["max_diff"] = max(float((full[k].float() - v.float()).abs().max()) for k, v in want.items()) \
            if _rank() == 0 else 0.0
        found["same_names"] = sorted(full) == sorted(want) if _rank() == 0 else True
        raise SetupDone

    module.build_optimizer = stop
    cfg = from_dict(config_cls, json.loads(Path(recipe).read_text()))
    mode.__enter__()
    try:
        module.train(cfg, resume="never")
    except SetupDone:
        pass
    finally:
        module.build_optimizer = original
    return found


def setup(out: Path, pretrain_recipe: str, sft_recipe: str) -> None:
    from ilm.model import build_model, get_preset
    from ilm.model.hf import load_checkpoint
    from ilm.train import pretrain, sft

    p_cfg = json.loads(Path(pretrain_recipe).read_text())
    s_cfg = json.loads(Path(sft_recipe).read_text())

    def scratch():
        m = p_cfg["model"]
        return build_model(get_preset(m["preset"], **m["overrides"]), seed=p_cfg["train"].get("seed", 0)).state_dict()

    result = {
        "pretrain": _probe_stage(pretrain, pretrain.PretrainConfig, pretrain_recipe, scratch),
        "sft": _probe_stage(sft, sft.SFTConfig, sft_recipe, lambda: load_checkpoint(s_cfg["init"]).state_dict()),
    }
    (out / f"setup-rank{_rank()}.json").write_text(json.dumps(result))


def ppo(out: Path, recipe: str) -> None:
    from ilm.model.hf import load_checkpoint
    from ilm.train.reward_model import load_reward_model
    from ilm.train.rlhf import ppo as ppo_module

    cfg = json.loads(Path(recipe).read_text())

    def expected():
        actor = load_checkpoint(cfg["actor"]).state_dict()
        critic = load_reward_model(cfg["reward_model"])[0].state_dict()
        return {**{f"actor.{k}": v for k, v in actor.items()}, **{f"critic.{k}": v for k, v in critic.items()}}

    result = {"ppo": _probe_stage(ppo_module, ppo_module.PPOConfig, recipe, expected)}
    (out / f"setup-rank{_rank()}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    kind, out, *recipes = sys.argv[1:]
    try:
        {"params": params, "setup": setup, "ppo": ppo}[kind](Path(out), *recipes)
    finally:
        shutdown_world()
