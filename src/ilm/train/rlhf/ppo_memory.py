"""PPO's memory pre-check: the peak per-GPU estimate, checked before any model is built.

The two phases of an update never coexist: generation (KV cache + prefill activations of one generate
call) ends before the scoring and training forwards start, and its cache is freed. So the peak is

    models + max(generation phase, training phase)

- models (alive all run), per process, with S = processes when sharded (FSDP2), else 1:
  actor: fp32 weights, fp32 gradients and two fp32 AdamW moments = 16 bytes/param / S; critic: the same
  minus the gradient and moments of its unused (frozen) LM head; reference and reward model: frozen, in
  the dtype they run in (bf16 = 2 bytes/param when training in bf16 on GPU, else fp32) / S; and under FSDP
  on several processes the rollout copy of the actor, whole, in that same dtype (decoding from the shards
  would all-gather the whole actor per generated token; it is refreshed from the actor once per update,
  one parameter at a time).
- generation phase: `ilm.model.memory.generation_estimate` for `ppo.generation_batch` rows of up to
  (longest query + max_new_tokens) positions, in the dtype decoding runs in (the rollout copy's, or the
  actor's fp32 when one process or DDP decodes with the actor itself): the KV cache
  (2 x layers x kv_heads x head_dim x bytes per token per row) and one prefill chunk's activations.
- training phase: `training_estimate` activations of one micro-batch (`ppo.micro_batch_rows` rows of that
  length, in the compute dtype, with or without activation checkpointing) for the actor and the critic
  together (one loss, one backward; the critic computes no vocabulary logits). The no-grad scoring
  forwards of the same micro-batches need less.

InternLM2-7B, `recipes/rlhf-internlm2-7b.toml`, 8 x 80 GB, queries up to 2,048 + 2,048 new tokens (run
`python -m ilm.train.rlhf.ppo_memory` for the figures): models 46.3 GiB (actor 14.4, critic 13.9, reference
+ RM 3.6, rollout copy 14.4), generation 16.3 GiB (KV cache 8.0 at 16 rows), training 21.9 GiB: peak
68.2 GiB (the generation and training phases added, in fp32, as before, came to 107-128 GiB). With less
memory lower `ppo.generation_batch` (the KV cache) or `ppo.micro_batch_rows`, or turn on
`train.activation_checkpointing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ilm.model.config import ModelConfig
from ilm.model.memory import (
    ACTIVATION_SAFETY,
    Estimate,
    check_fits,
    dtype_bytes,
    generation_estimate,
    gib,
    training_estimate,
)

PREFILL_CHUNK = 2048  # `ilm.model.generate.Sampling.prefill_chunk`, the sampler's default


@dataclass(frozen=True)
class PPOMemory:
    """Per-process bytes: the models (alive all run) and the two phases of an update."""

    actor: Estimate
    critic: Estimate
    frozen: Estimate  # reference + reward model
    rollout_copy: Estimate
    generation: Estimate
    training: Estimate

    @property
    def models(self) -> Estimate:
        return self.actor + self.critic + self.frozen + self.rollout_copy

    @property
    def peak_phase(self) -> str:
        return "generation" if self.generation.total >= self.training.total else "training"

    @property
    def peak(self) -> Estimate:
        return self.models + (self.generation if self.peak_phase == "generation" else self.training)

    def describe(self) -> str:
        return (f"models {gib(self.models.total)} (actor {gib(self.actor.total)}, critic {gib(self.critic.total)}, "
                f"reference + reward model {gib(self.frozen.total)}, rollout copy {gib(self.rollout_copy.total)}) "
                f"+ max(generation {gib(self.generation.total)}, training {gib(self.training.total)})")


def ppo_estimate(config: ModelConfig, p: Any, t: Any, longest: int, world_size: int, device_type: str) -> PPOMemory:
    """The estimate for the recipe's `[ppo]` `p` and `[train]` `t` on `world_size` processes of `device_type`,
    with queries of up to `longest` tokens (actor, reference, critic and reward model of one shape)."""
    shards = world_size if t.fsdp else 1
    bf16 = t.precision == "bf16"
    frozen_dtype = torch.bfloat16 if bf16 and device_type == "cuda" else torch.float32  # as `ppo._train` builds them
    copy = world_size > 1 and t.fsdp
    decode_dtype = frozen_dtype if copy else torch.float32  # the copy, or the actor's fp32 weights
    n = config.num_params()
    head = config.vocab_size * config.hidden_size
    seq = longest + p.max_new_tokens
    compute = torch.bfloat16 if bf16 else torch.float32
    train = training_estimate(config, p.micro_batch_rows, seq, torch.float32, compute, shards,
                              checkpointing=t.activation_checkpointing)
    logits = int(min(p.micro_batch_rows * seq, 4096) * config.vocab_size * 4 * 2 * ACTIVATION_SAFETY)
    gen = generation_estimate(config, p.generation_batch, seq, PREFILL_CHUNK, decode_dtype, weights_loaded=False)
    return PPOMemory(
        actor=Estimate(weights=train.weights, optimizer=train.optimizer),
        critic=Estimate(weights=train.weights, optimizer=(n - head) * (4 + 8) // shards),
        frozen=Estimate(weights=2 * n * dtype_bytes(frozen_dtype) // shards),
        rollout_copy=Estimate(weights=n * dtype_bytes(frozen_dtype) if copy else 0),
        generation=Estimate(kv_cache=gen.kv_cache, activations=gen.activations),
        training=Estimate(activations=2 * train.activations - logits),
    )


def check_memory(config: ModelConfig, p: Any, t: Any, longest: int, world_size: int, device: torch.device
                 ) -> PPOMemory:
    """Refuse (ContextMemoryError, one line naming the estimate) a run whose peak exceeds the free memory of
    `device`; returns the estimate."""
    est = ppo_estimate(config, p, t, longest, world_size, torch.device(device).type)
    check_fits(est.peak, device,
               f"PPO with queries of up to {longest:,} tokens + max_new_tokens {p.max_new_tokens:,} "
               f"({est.describe()}; peak in the {est.peak_phase} phase)",
               "lower ppo.generation_batch or ppo.micro_batch_rows, data.max_query_tokens or ppo.max_new_tokens, "
               "turn on train.activation_checkpointing, or use more processes")
    return est


def main() -> None:
    """Print the estimate of a PPO recipe for its model preset: python -m ilm.train.rlhf.ppo_memory [RECIPE]
    [--preset internlm2-7b] [--processes 8] [--device cuda]."""
    import argparse

    from ilm.config import load
    from ilm.model.config import get_preset
    from ilm.train.rlhf.ppo import PPOConfig

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("recipe", nargs="?", default="recipes/rlhf-internlm2-7b.toml")
    ap.add_argument("--preset", default="internlm2-7b")
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    cfg = load(PPOConfig, a.recipe)
    est = ppo_estimate(get_preset(a.preset), cfg.ppo, cfg.train, cfg.data.max_query_tokens, a.processes, a.device)
    print(f"{a.recipe} ({a.preset}, {a.processes} x {a.device}): {est.describe()}")
    print(f"peak {gib(est.peak.total)} in the {est.peak_phase} phase: {est.peak.describe()}")


if __name__ == "__main__":
    main()
