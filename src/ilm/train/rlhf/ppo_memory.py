"""PPO's memory pre-check: the estimate, checked before any model is built.

Memory plan, InternLM2-7B on 8 x 80 GB (the recipe's scale), per GPU:
- actor, FSDP2: fp32 weights 28 GB / 8 + AdamW moments 56 GB / 8 + fp32 gradients 28 GB / 8 = 14 GB;
- critic, FSDP2: the same, about 13 GB (its unused LM head is frozen: no gradient, no moments);
- reference and reward model, FSDP2, bf16, frozen: 14 GB / 8 each, about 3.5 GB together;
- the rollout copy of the actor (only when sharded; one process, or DDP, decodes with the actor itself):
  generation runs many small decode steps per rank, and sharded weights would need an all-gather per layer
  per token (and the same number of steps on every rank, whatever each rank's responses), so each rank
  decodes with an unsharded bf16 copy: 14 GB at 7B (2 bytes per parameter), allocated after the sharded
  models and the optimiser exist. It is refreshed from the actor once per update one parameter at a time
  (all-gathered in fp32, cast into the copy, freed: at most one whole fp32 parameter in flight, the
  embedding at 7B: 92,544 x 4,096 x 4 bytes = 1.5 GB), never read from a checkpoint. It is kept because
  decoding from the shards would cost an all-gather of the whole actor per generated token. Plus the KV
  cache (32 layers x 8 KV heads x 128 x 2 x 2 bytes = 128 KB per token; a generate call of 32 rows x 4k
  tokens = 17 GB, freed before training);
- activations: with activation checkpointing (`train.activation_checkpointing`) and 2 rows of up to 4k
  tokens per micro-batch, a few GB; the (rows x tokens x 92,544) fp32 logits of the training forward are
  the largest single tensor (1.5 GB per 4k-token row), hence small micro-batches.
Peak about 62 GB (the generation phase: 14 + 13 + 3.5 + 14 + 17), so it fits 80 GB; with less memory
lower `ppo.generation_batch` first (the KV cache), then `ppo.micro_batch_rows`.
"""

from __future__ import annotations

from typing import Any

import torch

from ilm.model.config import ModelConfig
from ilm.model.memory import Estimate, check_fits, generation_estimate, training_estimate


def check_memory(config: ModelConfig, p: Any, t: Any, longest: int, world_size: int, device: torch.device) -> None:
    """Refuse (ContextMemoryError) a run whose estimate exceeds the free memory of `device` (`p`, `t`: the
    recipe's `[ppo]` and `[train]`; `longest`: the longest rendered query)."""
    # no cap at the actor's max_position_embeddings x factor: the limit is memory -- actor and critic in training,
    # the frozen reference and reward model, and one generation batch's KV cache (ilm.model.memory)
    seq = longest + p.max_new_tokens
    shards = world_size if t.fsdp else 1
    est = training_estimate(config, p.micro_batch_rows, seq, shards=shards,
                            compute_dtype=torch.bfloat16 if t.precision == "bf16" else torch.float32,
                            checkpointing=t.activation_checkpointing)
    gen = generation_estimate(config, p.generation_batch, seq, 2048, weights_loaded=False)
    frozen_weights = Estimate(weights=2 * config.num_params() * 4 // shards)
    check_fits(est + est + frozen_weights + Estimate(kv_cache=gen.kv_cache, activations=gen.activations), device,
               f"PPO with queries of up to {longest:,} tokens + max_new_tokens {p.max_new_tokens:,}",
               "lower data.max_query_tokens, ppo.max_new_tokens, micro_batch_rows or generation_batch")
