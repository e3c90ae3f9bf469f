"""`ilm rlhf ppo RECIPE.toml`: online RLHF with PPO steered by the conditional reward model (docs/recipe.md, Online RLHF).

Four models: the actor (from the SFT checkpoint, trained), the reference (the same SFT weights, frozen),
the critic (the reward model's backbone + its head as the value head, trained) and the conditional reward
model (frozen). One update, top to bottom in `_train`:

1. take `ppo.rollout_batch` queries (a seeded walk over the query pool, a pure function of the update
   index) and roll them out with the KV-cache generator (top_p 0.9, temperature 1, stop at `<|im_end|>`),
   `ppo.generation_batch` queries per generate call, each call with its own seed: the same tokens come out
   however many processes share the work;
2. score: the reference's log-probs, the critic's values, and the reward model's score under the
   condition (system prompt) chosen from the query's category (unknown categories fall back to the
   default condition, counted), read at the reward token after the response;
3. per-token reward = -kl_coef * KL_t(actor || ref) (estimator k1 by default) + the score on the last
   response token; GAE (gamma 1, lambda 0.99); advantages whitened over the whole rollout;
4. `ppo.ppo_epochs` passes over `ppo.mini_batches` shuffled mini-batches: clipped policy loss + clipped
   value loss, and the pretraining loss (ptx, coefficient 0.5) on `ppo.ptx_rows` packed rows from token
   shards per optimizer step; during the critic warm-up (`ppo.critic_warmup_updates`, 50) only the critic
   trains and the actor is not touched at all.

Checkpoint: actor and critic live in one `PPOModels` module with one AdamW whose parameter groups carry
the two learning rates (actor 1e-6, critic 5e-6 at 7B); `ilm.train.checkpoint` saves it with the update
index, the ptx packer's position and the RNG states, so a rerun after kill -9 continues exactly.

Start-up: the four models are built on the meta device, sharded with FSDP2 (`run.prepare` for the actor and
critic, the same layer-then-root sharding for the frozen reference and reward model), and only then given
their weights in place, each process reading just its rows of each tensor from the safetensors files
(`run.materialise` / `ilm.model.hf.load_weights` for the actor and reference, `load_reward_weights` for the
critic and reward model): no process ever holds a whole model, or a whole parameter, read from a checkpoint.

Processes (torchrun): each rank rolls out and scores its share of the generate calls; the per-row results
are all-gathered, so every rank holds the whole rollout and computes the same advantages, whitening and
mini-batch plan. Each mini-batch's rows are split evenly between ranks, and an optimizer step is
`run.accumulate`'s token-weighted mean over every rank's micro-batches (the ptx rows the same way, weighted
by their label tokens), so the update equals the one-process update; gradients are reduced once per model
per step, in its last backward. Frozen models are sharded too; every rank runs the same number of forwards
of each model (row counts are equal by construction), which FSDP's collectives require. With
`train.fsdp = false` (DDP) every process holds the four models whole and decodes with the actor itself.

Run directory (what `ilm rlhf run` and people read):
- `metrics.jsonl`, one row per update ("step" = update index): reward_mean / reward_std (RM score), kl (sum
  over the response, mean over rows), kl_per_token, entropy, response_length, truncated_fraction,
  policy_loss, clip_fraction (None during the warm-up), value_loss, explained_variance, ptx_loss,
  ptx_eval_loss (with data.ptx_eval), true_reward (with a true-reward function), unknown_category,
  grad norms, rollout_tokens, rollout_tokens_per_s, update_s; `ppo.png` plots them;
- `rollouts/update-%06d.jsonl`, one line per rollout: update, row, query_index (line order among the kept
  queries), messages, category, domain (the condition used), response (text, stop token dropped),
  response_tokens (stop token included), rm_score, kl, truncated, true_reward (when given);
- `step-%08d/` checkpoints, `summary.json`, and at the end `final/actor` (HF checkpoint + tokenizer) and
  `final/critic` (reward-model format: a later run's `critic`).

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

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ilm.model import InternLM2, build_model, packed_batch, positions_from_doc_ids
from ilm.model.hf import read_config
from ilm.model.memory import Estimate, check_fits, generation_estimate, training_estimate
from ilm.train import checkpoint
from ilm.train.distributed import World, apply_fsdp, init_world
from ilm.train.losses import gae, kl_penalty, masked_mean, policy_loss, value_loss, whiten
from ilm.train.metrics import run_name
from ilm.train.reward import DEFAULT_CONDITIONS
from ilm.train.reward_model import RewardModel, load_reward_weights, reward_model_on_meta, save_reward_model
from ilm.train.rlhf.queries import Query, demo_queries, generation_seed, load_queries, query_indices
from ilm.train.rlhf.rollout import collate, sample, sequence_logprobs
from ilm.train.rlhf.scoring import chunks, critic_values, forward_rows, rm_sequences, score_rows
from ilm.train.run import (
    accumulate,
    autocast_for,
    check_vocab,
    determinism,
    fingerprint,
    materialise,
    model_shape,
    prepare,
    progress,
    raise_if_stopped,
    start,
    stop_requested,
)

__all__ = ["PPOConfig", "PPOData", "PPOModels", "PPOOptim", "PPOSection", "PPOTrain", "Query", "demo_queries",
           "load_queries", "query_indices", "train"]

TrueRewardFn = Callable[[dict, str], float]  # (the query's jsonl record, response text) -> known true reward


@dataclass
class PPOData:
    queries: list[str] = field(default_factory=list)  # jsonl: {"messages": [...], "category": "..."}
    ptx: list[str] = field(default_factory=list)  # token shard dirs (`ilm pretrain tokenize`) for the ptx loss
    ptx_eval: str | None = None  # a held-out shard dir: its loss (ptx_eval_loss) is logged every update
    ptx_eval_rows: int = 8
    conditions: dict[str, str] | None = None  # category -> RM system prompt; None: the reward model's own table
    default_domain: str | None = None  # the condition for unknown categories; None: the reward model's
    max_query_tokens: int = 1024  # longer rendered queries are skipped (counted)


@dataclass
class PPOSection:
    rollout_batch: int = 512  # queries per update, all processes together
    generation_batch: int = 64  # queries per generate call (each call seeded on its own)
    max_new_tokens: int = 1024
    top_p: float = 0.9
    temperature: float = 1.0
    kl_coef: float = 0.01  # beta of the per-token KL penalty
    kl_estimator: str = "k1"  # k1 | k2 | k3
    gamma: float = 1.0
    lam: float = 0.99
    clip: float = 0.2  # policy ratio clip
    value_clip: float = 0.2
    vf_coef: float = 1.0
    whiten_advantages: bool = True
    ppo_epochs: int = 1
    mini_batches: int = 4  # optimizer steps per epoch
    micro_batch_rows: int = 4  # rows per training forward, per process
    critic_warmup_updates: int = 50  # the first updates train the critic alone
    ptx_coef: float = 0.5  # 0 switches the pretraining loss off
    ptx_rows: int = 4  # packed pretraining rows per optimizer step, all processes (tokens ~ the mini-batch's)
    ptx_window: int = 2048
    recompute_logprobs: bool = False  # old log-probs from a training forward instead of sampling time (bf16)


@dataclass
class PPOOptim:
    actor_lr: float = 1e-6
    critic_lr: float = 5e-6
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # per model (actor and critic clipped separately)


@dataclass
class PPOTrain:
    updates: int = 400
    seed: int = 0
    precision: str = "bf16"
    device: str = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    fsdp: bool = True
    deterministic: bool = False
    checkpoint_every: int = 10  # updates
    keep_last: int = 3
    progress: bool = True


@dataclass
class PPOConfig:
    run_dir: str = "runs/rlhf"
    tokenizer: str = ""  # "": the actor checkpoint's tokenizer files
    actor: str = ""  # HF checkpoint of the SFT model (`ilm sft` export): actor and reference
    reward_model: str = ""  # `ilm rm train` export (run_dir/final)
    critic: str | None = None  # a reward-model-format export to start the critic from; None: reward_model
    true_reward: str | None = None  # "module:function" (query record, response text) -> float, logged only
    data: PPOData = field(default_factory=PPOData)
    ppo: PPOSection = field(default_factory=PPOSection)
    optim: PPOOptim = field(default_factory=PPOOptim)
    train: PPOTrain = field(default_factory=PPOTrain)


# ----------------------------------------------------------------------------- models


class Critic(nn.Module):
    """The reward model's backbone with its head read at every position: values (B, T), fp32."""

    def __init__(self, rm: RewardModel):
        super().__init__()
        self.backbone = rm.backbone
        self.v_head = rm.v_head
        self.backbone.output.requires_grad_(False)  # the LM head is not used

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.v_head(self.backbone(input_ids, return_hidden=True)).squeeze(-1).float()


class PPOModels(nn.Module):
    """What a checkpoint holds: the two trained models (one optimizer, one parameter group per lr)."""

    def __init__(self, actor: InternLM2, critic: Critic):
        super().__init__()
        self.actor = actor
        self.critic = critic


def build_optimizer(models: PPOModels, cfg: PPOOptim) -> torch.optim.AdamW:
    groups = []
    for role, module, lr in (("actor", models.actor, cfg.actor_lr), ("critic", models.critic, cfg.critic_lr)):
        params = [p for p in module.parameters() if p.requires_grad]
        groups.append({"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": lr, "role": role})
        groups.append({"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr, "role": role})
    optimizer = torch.optim.AdamW(groups, lr=cfg.actor_lr, betas=tuple(cfg.betas), eps=cfg.eps)
    # AdamW creates a parameter's state at its first step; the actor's first step comes only after the
    # critic warm-up, and a checkpoint taken before it would lack that state (a strict load then fails).
    # Create it now exactly as AdamW would (step 0, zero moments), so every checkpoint holds all of it.
    for group in optimizer.param_groups:
        for q in group["params"]:
            optimizer.state[q] = {"step": torch.zeros((), dtype=torch.get_default_dtype()),
                                  "exp_avg": torch.zeros_like(q, memory_format=torch.preserve_format),
                                  "exp_avg_sq": torch.zeros_like(q, memory_format=torch.preserve_format)}
    return optimizer


# ----------------------------------------------------------------------------- checks before any work


def _tokenizer_files(path: Path) -> dict[str, bytes]:
    return {n: (path / n).read_bytes() for n in ("tokenizer.json", "tokenizer.model") if (path / n).exists()}


def check_inputs(cfg: PPOConfig, world_size: int) -> str:
    """Every mistake a recipe can hold, found before a model is loaded; returns the tokenizer dir."""
    p = cfg.ppo
    if not cfg.actor:
        raise ValueError("the recipe sets no `actor` (the SFT model's HF checkpoint)")
    if not cfg.reward_model:
        raise ValueError("the recipe sets no `reward_model` (an `ilm rm train` export)")
    if not cfg.data.queries:
        raise ValueError("the recipe has no data.queries files")
    for what, path in (("actor", cfg.actor), ("reward_model", cfg.reward_model), ("critic", cfg.critic)):
        if path and not (Path(path) / "config.json").exists():
            raise FileNotFoundError(f"{what} {path}: not an HF checkpoint directory (no config.json)")
    if p.ptx_coef > 0 and not cfg.data.ptx:
        raise ValueError("ppo.ptx_coef > 0 needs data.ptx token shard dirs (or set ppo.ptx_coef = 0)")
    if p.kl_estimator not in ("k1", "k2", "k3"):
        raise ValueError(f"ppo.kl_estimator must be k1, k2 or k3, got {p.kl_estimator!r}")
    if p.rollout_batch % (p.generation_batch * world_size):
        raise ValueError(f"ppo.rollout_batch {p.rollout_batch} is not a multiple of generation_batch x processes "
                         f"= {p.generation_batch * world_size}")
    if p.rollout_batch % (p.mini_batches * world_size):
        raise ValueError(f"ppo.rollout_batch {p.rollout_batch} is not a multiple of mini_batches x processes "
                         f"= {p.mini_batches * world_size}")
    if p.ptx_coef > 0 and p.ptx_rows % world_size:
        raise ValueError(f"ppo.ptx_rows {p.ptx_rows} is not a multiple of the {world_size} processes")
    tok_dir = Path(cfg.tokenizer or cfg.actor)
    mine = _tokenizer_files(tok_dir)
    if not mine:
        raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in {tok_dir}; set `tokenizer`")
    for what, path in (("actor", cfg.actor), ("reward model", cfg.reward_model), ("critic", cfg.critic)):
        theirs = _tokenizer_files(Path(path)) if path else {}
        if theirs and theirs != mine:
            raise ValueError(f"the {what} at {path} was trained with a different tokenizer than the actor's "
                             f"({tok_dir}); its rewards/values would read other tokens. Use the reward model "
                             "trained on this SFT model's tokenizer")
    rm_cfg = json.loads((Path(cfg.reward_model) / "config.json").read_text())
    actor_cfg = json.loads((Path(cfg.actor) / "config.json").read_text())
    if rm_cfg.get("vocab_size") != actor_cfg.get("vocab_size"):
        raise ValueError(f"the reward model's vocabulary ({rm_cfg.get('vocab_size')}) differs from the actor's "
                         f"({actor_cfg.get('vocab_size')}): they do not share a tokenizer")
    if not (Path(cfg.reward_model) / "reward_config.json").exists():
        raise FileNotFoundError(f"{cfg.reward_model}: no reward_config.json; is this an `ilm rm train` export?")
    return str(tok_dir)


def _all_gather(obj: Any, world: World) -> list[Any]:
    if world.size == 1:
        return [obj]
    box: list[Any] = [None] * world.size
    dist.all_gather_object(box, obj)
    return box


def _all_sum(values: list[float], world: World) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if world.size > 1:
        t = t.to(world.device)
        dist.all_reduce(t)
    return t.cpu().tolist()


def _pad(rows: list[list[float]], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.float32)
    return out


def _ppo_loss(ix: list[int], actor: nn.Module | None, critic: nn.Module, roll: dict, sums: dict, p: PPOSection,
              dev: torch.device, autocast, pad_id: int) -> torch.Tensor:
    """Mean over the rows `ix`'s response tokens of the clipped value loss, plus the clipped policy loss when
    the actor trains (`actor` None during the warm-up); the token sums go to `sums` for the metrics."""
    b = collate([roll["prompts"][i] for i in ix], [roll["responses"][i] for i in ix], pad_id)
    w = b["mask"].shape[1]
    m = b["mask"].to(dev)
    n = float(m.sum())
    with autocast():
        v_new = critic_values(critic, b, dev)
    vf = value_loss(v_new.float(), roll["old_values"][ix, :w].to(dev), roll["returns"][ix, :w].to(dev), m,
                    p.value_clip)
    loss = p.vf_coef * vf
    sums["vf"] += float(vf.detach()) * n
    if actor is not None:
        with autocast():
            logp, _ = sequence_logprobs(actor, b, p.temperature)
        pg, frac = policy_loss(logp.float(), roll["old_logp"][ix, :w].to(dev), roll["adv"][ix, :w].to(dev), m, p.clip)
        loss = loss + pg
        sums["pg"] += float(pg.detach()) * n
        sums["clip"] += float(frac) * n
    return loss


def _ptx_loss(batch: tuple[torch.Tensor, ...], actor: nn.Module, sums: dict, coef: float, dev: torch.device,
              autocast) -> torch.Tensor:
    """coef x the mean next-token loss over a micro-batch of packed pretraining rows (ids, doc ids, labels)."""
    ids, doc, labels = batch
    d = doc.to(dev)
    with autocast():
        lm = actor(ids.to(dev), positions_from_doc_ids(d), packed_batch(d), labels=labels.to(dev))
    n = float((labels != -100).sum())
    sums["ptx"] += float(lm.detach()) * n
    sums["ptx_n"] += n
    return coef * lm


def _shard_frozen(model: nn.Module, core: nn.Module, world: World, fsdp: bool) -> None:
    """FSDP2 for a frozen model (reference, reward model) on several processes: its layers and then its root,
    as `prepare` does for the trained ones; no mixed precision (it is already in the dtype it runs in).
    Without FSDP (`train.fsdp = false`: DDP) every process holds it whole, as it holds the trained ones."""
    if world.size > 1 and fsdp:
        apply_fsdp(core)
        if model is not core:
            from torch.distributed.fsdp import fully_shard

            fully_shard(model)


@torch.no_grad()
def _sync_rollout_copy(copy: InternLM2, actor: nn.Module) -> None:
    """Copy the (sharded) actor into the rollout copy one parameter at a time: each is all-gathered whole
    (fp32), cast into the copy and freed, so the transient cost is the largest parameter, not a model."""
    from torch.distributed.tensor import DTensor

    from ilm.model.init import canonical_name

    mine = dict(copy.named_parameters())
    for name, param in actor.named_parameters():
        whole = param.full_tensor() if isinstance(param, DTensor) else param
        mine[canonical_name(name)].copy_(whole)
        del whole


def _write_atomic(path: Path, text: str) -> None:
    from ilm.data.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def load_true_reward(spec: str) -> TrueRewardFn:
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"true_reward {spec!r} must look like package.module:function")
    return getattr(importlib.import_module(module), name)


# ----------------------------------------------------------------------------- the loop


def train(cfg: PPOConfig, resume: str = "auto", reward_fn: TrueRewardFn | None = None) -> dict[str, Any]:
    """Run (or resume) PPO for `train.updates` updates; returns the summary (last metrics, data report, exports).

    `reward_fn(query_record, response_text) -> float`, if given (or `cfg.true_reward`), is a known true
    reward: logged per update as `true_reward` and per rollout, never trained on.
    """
    with determinism(cfg.train.deterministic):
        return _train(cfg, resume, reward_fn)


def _train(cfg: PPOConfig, resume: str, reward_fn: TrueRewardFn | None) -> dict[str, Any]:
    from ilm.data.packing import Packer, packed_labels
    from ilm.data.shards import TokenShards
    from ilm.tokenizer import load_tokenizer

    world = init_world(cfg.train.device)
    t, p = cfg.train, cfg.ppo
    tok_dir = check_inputs(cfg, world.size)
    if reward_fn is None and cfg.true_reward:
        reward_fn = load_true_reward(cfg.true_reward)
    torch.manual_seed(t.seed)
    tok = load_tokenizer(tok_dir)
    meta = json.loads((Path(cfg.reward_model) / "reward_config.json").read_text())
    conditions = cfg.data.conditions or meta.get("conditions") or dict(DEFAULT_CONDITIONS)
    default_domain = cfg.data.default_domain or meta.get("default_domain") or "default"
    if default_domain not in conditions:
        raise ValueError(f"default domain {default_domain!r} has no entry in the conditions ({sorted(conditions)})")
    queries, report = load_queries(cfg.data.queries, tok, conditions, default_domain, cfg.data.max_query_tokens)
    if not queries:
        raise ValueError(f"no usable queries in {cfg.data.queries}: {report['skipped']}")
    ptx_sources = {str(i): TokenShards(d) for i, d in enumerate(cfg.data.ptx)} if p.ptx_coef > 0 else {}
    ptx_eval = TokenShards(cfg.data.ptx_eval) if cfg.data.ptx_eval else None

    # the four models: each is built on the meta device, sharded (FSDP2) like the other trainers' models, and
    # only then given its weights, every process reading just its own rows from the checkpoint: no process
    # ever holds a whole model read from a checkpoint (the rollout copy below is the one deliberate exception)
    dev = world.device
    actor_config = read_config(cfg.actor)[0]
    check_vocab(tok, actor_config.vocab_size)
    longest = max(len(q.prompt) for q in queries)
    # no cap at the actor's max_position_embeddings x factor: the limit is memory -- actor and critic in training,
    # the frozen reference and reward model, and one generation batch's KV cache (ilm.model.memory)
    seq = longest + p.max_new_tokens
    shards = world.size if t.fsdp else 1
    est = training_estimate(actor_config, p.micro_batch_rows, seq, shards=shards,
                            compute_dtype=torch.bfloat16 if t.precision == "bf16" else torch.float32,
                            checkpointing=t.activation_checkpointing)
    gen = generation_estimate(actor_config, p.generation_batch, seq, 2048, weights_loaded=False)
    frozen_weights = Estimate(weights=2 * actor_config.num_params() * 4 // shards)
    check_fits(est + est + frozen_weights + Estimate(kv_cache=gen.kv_cache, activations=gen.activations), dev,
               f"PPO with queries of up to {longest:,} tokens + max_new_tokens {p.max_new_tokens:,}",
               "lower data.max_query_tokens, ppo.max_new_tokens, micro_batch_rows or generation_batch")
    # the frozen ones are kept in bf16 when training in bf16 on GPU (see the memory plan above)
    frozen = torch.bfloat16 if t.precision == "bf16" and dev.type == "cuda" else torch.float32
    actor = build_model(actor_config, device="meta")
    prepare(actor, t, world)
    materialise(actor, world, t.seed, cfg.actor)
    ref = build_model(actor_config, device="meta", dtype=frozen).requires_grad_(False).eval()
    _shard_frozen(ref, ref, world, t.fsdp)
    materialise(ref, world, t.seed, cfg.actor)
    rm = reward_model_on_meta(cfg.reward_model, dtype=frozen).requires_grad_(False).eval()
    _shard_frozen(rm, rm.backbone, world, t.fsdp)
    load_reward_weights(rm.to_empty(device=dev), cfg.reward_model)
    critic = Critic(reward_model_on_meta(cfg.critic or cfg.reward_model, dtype=torch.float32))
    prepare(critic, t, world, backbone=critic.backbone)
    load_reward_weights(critic.to_empty(device=dev), cfg.critic or cfg.reward_model)
    shape = {"actor": model_shape(actor.config), "critic": model_shape(critic.config)}
    models = PPOModels(actor, critic)
    optimizer = build_optimizer(models, cfg.optim)
    rollout_copy = None
    if world.size > 1 and t.fsdp:  # decoding runs on an unsharded copy (see the memory plan), refreshed per update
        rollout_copy = build_model(actor_config, device="meta", dtype=frozen).requires_grad_(False)
        rollout_copy.to_empty(device=dev)
    autocast = autocast_for(world, t.precision)
    stop_ids = tuple(tok.stop_ids)
    pad_id = tok.pad_id

    run_dir = Path(cfg.run_dir)
    data_id = {"queries": len(queries), "fingerprint": fingerprint(len(q.prompt) for q in queries),
               "rollout_batch": p.rollout_batch, "seed": t.seed}
    update, rest, metrics = start(run_dir, resume, models, optimizer, shape, world, data_id)
    packer = Packer(ptx_sources, {k: 1.0 for k in ptx_sources}, p.ptx_window, seed=t.seed) if ptx_sources else None
    if packer is not None and rest.get("ptx"):
        packer.load_state_dict(rest["ptx"])
    eval_rows = None
    if ptx_eval is not None:
        ids, doc = Packer({"eval": ptx_eval}, {"eval": 1.0}, p.ptx_window, seed=0).next_batch(cfg.data.ptx_eval_rows)
        eval_rows = (ids, doc, packed_labels(ids, doc))
    rollouts_dir = run_dir / "rollouts"
    if world.is_main:
        for old in rollouts_dir.glob("update-*.jsonl") if rollouts_dir.is_dir() else []:
            if int(old.stem.split("-")[1]) > update:  # written after the checkpoint: redone
                old.unlink()

    def ptx_eval_loss() -> float | None:
        if eval_rows is None:
            return None
        ids, doc, labels = eval_rows
        with torch.no_grad(), autocast():
            d = doc.to(dev)
            return float(actor(ids.to(dev), positions_from_doc_ids(d), packed_batch(d), labels=labels.to(dev)))

    start_eval = rest.get("ptx_eval_start") if update else ptx_eval_loss()
    bar = progress(world, t.progress, t.updates, update)
    while update < t.updates:
        t0 = time.perf_counter()
        actor_trains = update >= p.critic_warmup_updates

        # 1. rollouts: this rank's generate calls
        picked = query_indices(len(queries), update, p.rollout_batch, t.seed)
        n_chunks = p.rollout_batch // p.generation_batch
        gen_model = actor
        if rollout_copy is not None:
            _sync_rollout_copy(rollout_copy, actor)
            gen_model = rollout_copy
        rows: list[int] = []
        rollouts = []
        for c in range(world.rank, n_chunks, world.size):
            idx = list(range(c * p.generation_batch, (c + 1) * p.generation_batch))
            rows += idx
            rollouts += sample(gen_model, [queries[picked[i]].prompt for i in idx], p.max_new_tokens, stop_ids,
                               p.top_p, p.temperature, seed=generation_seed(t.seed, update, c))
        t_gen = time.perf_counter() - t0
        mine_q = [queries[picked[i]] for i in rows]
        prompts = [r.prompt for r in rollouts]
        responses = [r.response for r in rollouts]

        # 2. reference log-probs, values, rewards for these rows
        ref_lp = forward_rows(lambda b: sequence_logprobs(ref, b, p.temperature)[0], prompts, responses,
                              p.micro_batch_rows, pad_id, autocast)
        old_lp = [r.logprobs for r in rollouts]
        if p.recompute_logprobs:
            old_lp = forward_rows(lambda b: sequence_logprobs(actor, b, p.temperature)[0], prompts, responses,
                                  p.micro_batch_rows, pad_id, autocast)
        vals = forward_rows(lambda b: critic_values(critic, b, dev), prompts, responses, p.micro_batch_rows,
                            pad_id, autocast)
        seqs, rm_cut = rm_sequences(tok, mine_q, responses, meta, conditions, set(stop_ids))
        scores = score_rows(rm, seqs, p.micro_batch_rows, dev, autocast, pad_id)
        mine = [{"row": i, "prompt": r.prompt, "response": r.response, "old": o, "ref": f, "values": v,
                 "score": s, "truncated": r.truncated, "entropy": r.entropy} for i, r, o, f, v, s in
                zip(rows, rollouts, old_lp, ref_lp, vals, scores)]
        everything = sorted((x for part in _all_gather(mine, world) for x in part), key=lambda x: x["row"])
        rm_cut = int(_all_sum([rm_cut], world)[0])

        # 3. rewards, advantages (the same on every rank)
        N = len(everything)
        lengths = torch.tensor([len(x["response"]) for x in everything])
        R = max(int(lengths.max()), 1)
        mask = (torch.arange(R)[None, :] < lengths[:, None]).long()
        old_logp, ref_logp = _pad([x["old"] for x in everything], R), _pad([x["ref"] for x in everything], R)
        old_values = _pad([x["values"] for x in everything], R)
        score = torch.tensor([x["score"] for x in everything])
        kl = kl_penalty(old_logp, ref_logp, p.kl_estimator) * mask
        rewards = -p.kl_coef * kl
        last = (lengths - 1).clamp(min=0)
        rewards[torch.arange(N), last] += score * (lengths > 0)
        adv, returns = gae(rewards, old_values, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            adv = whiten(adv, mask)
        all_prompts = [x["prompt"] for x in everything]
        all_responses = [x["response"] for x in everything]

        # 4. PPO epochs over mini-batches
        sums = {"pg": 0.0, "clip": 0.0, "vf": 0.0, "ptx": 0.0, "ptx_n": 0.0}
        steps = 0
        grad_norms = {"actor": [], "critic": []}
        per_mini = N // p.mini_batches

        roll = {"prompts": all_prompts, "responses": all_responses, "old_values": old_values, "returns": returns,
                "old_logp": old_logp, "adv": adv}
        ppo_loss = partial(_ppo_loss, actor=actor if actor_trains else None, critic=critic, roll=roll, sums=sums,
                           p=p, dev=dev, autocast=autocast, pad_id=pad_id)
        ptx_loss = partial(_ptx_loss, actor=actor, sums=sums, coef=p.ptx_coef, dev=dev, autocast=autocast)
        for epoch in range(p.ppo_epochs):
            perm = np.random.default_rng([t.seed, update, epoch]).permutation(N)
            for k in range(p.mini_batches):
                # one optimizer step: the token-weighted mean over the mini-batch's rows on every process
                # (`run.accumulate`); gradients are reduced once, in each model's last backward of the step
                batch_rows = perm[k * per_mini : (k + 1) * per_mini]
                my_rows = batch_rows[world.rank :: world.size].tolist()
                micro = [[my_rows[j] for j in chunk] for chunk in chunks(len(my_rows), p.micro_batch_rows)]
                accumulate(models, micro, [int(mask[ix].sum()) for ix in micro], ppo_loss, world)
                if actor_trains and packer is not None:
                    ids, doc = packer.next_batch(p.ptx_rows)
                    labels = packed_labels(ids, doc)
                    my = list(range(world.rank, p.ptx_rows, world.size))
                    rows_ptx = [[my[j] for j in chunk] for chunk in chunks(len(my), p.micro_batch_rows)]
                    accumulate(actor, [(ids[ix], doc[ix], labels[ix]) for ix in rows_ptx],
                               [int((labels[ix] != -100).sum()) for ix in rows_ptx], ptx_loss, world)
                if actor_trains:
                    grad_norms["actor"].append(float(torch.nn.utils.clip_grad_norm_(
                        [q for q in actor.parameters() if q.grad is not None], cfg.optim.grad_clip)))
                grad_norms["critic"].append(float(torch.nn.utils.clip_grad_norm_(
                    [q for q in critic.parameters() if q.grad is not None], cfg.optim.grad_clip)))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
        update += 1

        # 5. metrics, rollouts file, checkpoint
        tot = _all_sum([sums["pg"], sums["clip"], sums["vf"], sums["ptx"], sums["ptx_n"]], world)
        trained_tokens = max(int(mask.sum()) * p.ppo_epochs, 1)
        resp_len = lengths.float()
        ev_var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
        resid = returns - old_values
        resid_var = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
        true = None
        if reward_fn is not None and world.is_main:
            texts = [tok.decode([q for q in x["response"] if q not in stop_ids]) for x in everything]
            true = [float(reward_fn(queries[picked[x["row"]]].record, s)) for x, s in zip(everything, texts)]
        entropy_tokens = torch.tensor([e for x in everything for e in x["entropy"]])
        row = {
            "update": update, "actor_trained": actor_trains,
            "reward_mean": float(score.mean()), "reward_std": float(score.std()) if N > 1 else 0.0,
            "kl": float(kl.sum(1).mean()), "kl_per_token": float(masked_mean(kl, mask)),
            "entropy": float(entropy_tokens.mean()) if len(entropy_tokens) else 0.0,
            "response_length": float(resp_len.mean()), "truncated_fraction": float(np.mean([x["truncated"] for x in everything])),
            "policy_loss": tot[0] / trained_tokens if actor_trains else None,
            "clip_fraction": tot[1] / trained_tokens if actor_trains else None,
            "value_loss": tot[2] / trained_tokens,
            "explained_variance": float(1.0 - resid_var / ev_var.clamp(min=1e-12)),
            "ptx_loss": tot[3] / tot[4] if tot[4] else None,
            "return_mean": float(masked_mean(returns, mask)),
            "unknown_category": sum(queries[picked[x["row"]]].unknown_category for x in everything),
            "rm_inputs_cut": rm_cut,
            "grad_norm_actor": float(np.mean(grad_norms["actor"])) if grad_norms["actor"] else None,
            "grad_norm_critic": float(np.mean(grad_norms["critic"])),
            "optimizer_steps": steps, "rollout_tokens": int(lengths.sum()),
            "rollout_tokens_per_s": float(lengths.sum()) / max(t_gen, 1e-9),
            "update_s": time.perf_counter() - t0,
        }
        if eval_rows is not None:
            row["ptx_eval_loss"] = ptx_eval_loss()
        if true is not None:
            row["true_reward"] = float(np.mean(true))
        metrics.log(update, **row)
        if world.is_main:
            lines = []
            for j, x in enumerate(everything):
                q = queries[picked[x["row"]]]
                line = {"update": update, "row": x["row"], "query_index": q.index, "messages": q.record["messages"],
                        "category": q.record.get("category"), "domain": q.domain,
                        "response": tok.decode([i for i in x["response"] if i not in stop_ids]),
                        "response_tokens": len(x["response"]), "rm_score": x["score"],
                        "kl": float(kl[j].sum()), "truncated": x["truncated"]}
                if true is not None:
                    line["true_reward"] = true[j]
                lines.append(json.dumps(line, ensure_ascii=False) + "\n")
            _write_atomic(rollouts_dir / f"update-{update:06d}.jsonl", "".join(lines))
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"reward": f"{row['reward_mean']:.3f}", "kl": f"{row['kl']:.3f}",
                             "vloss": f"{row['value_loss']:.3f}", "len": f"{row['response_length']:.0f}"})
        if stop_requested(world) or update % t.checkpoint_every == 0 or update == t.updates:
            extra = {"model_config": shape, "data": data_id, "stage": "ppo", "ptx_eval_start": start_eval,
                     "ptx": packer.state_dict() if packer is not None else None}
            checkpoint.save(run_dir, update, models, optimizer, extra=extra, keep_last=t.keep_last)
        raise_if_stopped(update)
    if bar is not None:
        bar.close()

    summary: dict[str, Any] = {"updates": update, "run_dir": str(run_dir), "data": report,
                               "last": metrics.rows[-1] if metrics.rows else None,
                               "ptx_eval_loss_start": start_eval, "rollouts": str(rollouts_dir),
                               "config": asdict(cfg)}
    if update == t.updates:
        summary["export"] = export(models, run_dir / "final", meta, tok_dir, world)
    if world.is_main:
        summary["plot"] = str(plot(metrics.rows, run_dir / "ppo.png", f"{run_name(run_dir)}: PPO",
                                         cfg.ppo.critic_warmup_updates))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    metrics.close()
    return summary


def export(models: PPOModels, path: Path, meta: dict, tokenizer_dir: str, world: World) -> dict[str, str]:
    """path/actor: HF checkpoint (+ tokenizer); path/critic: reward-model format (a later run's `critic`)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ilm.model import build_model
    from ilm.train.pretrain import export as export_lm

    actor_path = export_lm(models.actor, path / "actor", tokenizer_dir, world)
    state = get_model_state_dict(models.critic, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if world.is_main:
        plain = RewardModel(build_model(models.critic.config, device="meta")).to_empty(device="cpu")
        plain.load_state_dict(state)
        save_reward_model(plain, path / "critic", meta, tokenizer_dir)
    return {"actor": str(actor_path), "critic": str(path / "critic")}


PLOTTED = (("reward_mean", "RM score"), ("true_reward", "true reward"), ("kl", "KL (per response)"),
           ("entropy", "entropy"), ("response_length", "response length"), ("clip_fraction", "clip fraction"),
           ("value_loss", "value loss"), ("explained_variance", "explained variance"), ("ptx_loss", "ptx loss"),
           ("ptx_eval_loss", "held-out ptx loss"))


def plot(rows: list[dict], path: Path, title: str = "PPO", warmup: int = 0) -> Path | None:
    """One panel per PPO metric against the update index (panels with no data are left out)."""
    keys = [(k, label) for k, label in PLOTTED if any(r.get(k) is not None for r in rows)]
    if not rows or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(plt, rows, keys, title, warmup)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def figure(plt, rows: list[dict], keys: list[tuple[str, str]], title: str, warmup: int):
    """The PPO figure, titled, with the end of the critic warm-up (the actor starts training) marked."""
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 1.8 * len(keys) + 0.6), sharex=True, squeeze=False)
    last = max(r["step"] for r in rows)
    for ax, (k, label) in zip(axes[:, 0], keys):
        pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
        ax.plot([a for a, _ in pts], [b for _, b in pts], lw=1)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        if 0 < warmup < last:
            ax.axvline(warmup, color="grey", ls="--", lw=0.8)
    if 0 < warmup < last:
        axes[0, 0].annotate("critic warm-up ends", (warmup, 1), xycoords=("data", "axes fraction"),
                            xytext=(2, -10), textcoords="offset points", fontsize=7, color="grey")
    axes[-1, 0].set_xlabel("PPO update")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
