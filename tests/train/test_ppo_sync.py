"""DDP PPO (`train.fsdp = false`): actor and critic are replicated submodules of one `PPOModels`, and an
optimizer step reduces each model's gradients once, in its last backward, not once per micro-batch; the
actor's ptx rows (accumulated first, `reduce=False`) are reduced together with its PPO rows."""

import torch
import torch.distributed as dist
from torch import nn

from ilm.train.distributed import World, apply_ddp
from ilm.train.rlhf.update import PPOModels
from ilm.train.run import accumulate


def test_ppo_models_under_ddp_reduce_once_per_step(tmp_path):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = PPOModels(nn.Linear(4, 4), nn.Linear(4, 1))
        models = PPOModels(apply_ddp(nn.Linear(4, 4), torch.device("cpu")), apply_ddp(nn.Linear(4, 1), torch.device("cpu")))
        models.load_state_dict(plain.state_dict())
        calls = {"actor": 0, "critic": 0}

        def counting(name):
            def hook(state, bucket):
                calls[name] += 1
                return allreduce_hook(state, bucket)
            return hook

        models.actor.register_comm_hook(dist.group.WORLD, counting("actor"))
        models.critic.register_comm_hook(dist.group.WORLD, counting("critic"))
        world = World(0, 1, 0, torch.device("cpu"))
        gen = torch.Generator().manual_seed(1)
        ppo_rows = [torch.randn(n, 4, generator=gen) for n in (3, 1, 2)]
        ptx_rows = [torch.randn(n, 4, generator=gen) for n in (2, 2)]

        def ppo_loss(m):
            return lambda x: (m.critic(x) ** 2).mean() + (m.actor(x) ** 2).sum(-1).mean()

        def ptx_loss(m):
            return lambda x: m.actor(x).sum(-1).mean()

        for m in (models, plain):  # one optimizer step: ptx rows first (no reduce), then the PPO rows
            accumulate(m.actor, ptx_rows, [len(x) for x in ptx_rows], ptx_loss(m), world, reduce=False)
            accumulate(m, ppo_rows, [len(x) for x in ppo_rows], ppo_loss(m), world)
        print(f"all-reduces in one step of 3 PPO + 2 ptx micro-batches: {calls}")
        assert calls == {"actor": 1, "critic": 1}
        for a, b in zip(models.parameters(), plain.parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-7)
    finally:
        dist.destroy_process_group()
