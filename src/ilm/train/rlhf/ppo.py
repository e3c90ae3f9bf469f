"""`ilm rlhf ppo RECIPE.toml`: online RLHF with PPO steered by the conditional reward model (docs/recipe.md, Online RLHF).

Four models: the actor (from the SFT checkpoint, trained), the KL reference (frozen: `reference`, by default
the actor's own starting checkpoint; the rounds of `ilm rlhf run` keep the SFT model there in every round),
the critic (the reward model's backbone + its head as the value head, trained) and the conditional reward
model (frozen). One update, top to bottom in `_train`:

1. take `ppo.rollout_batch` queries (a seeded walk over the query pool, a pure function of the update
   index) and roll them out with the KV-cache generator (top_p 0.9, temperature 1, stop at `<|im_end|>`),
   `ppo.generation_batch` queries per generate call, each call with its own seed: the same tokens come out
   however many processes share the work;
2. score: the reference's log-probs, the critic's values, and the reward model's score under the
   condition (system prompt) chosen from the query's category (unknown categories fall back to the
   default condition, counted), read at the reward token after the response;
3. per-token reward = -kl_coef * KL_t(actor || reference) (estimator k1 by default) + the score on the last
   response token (+ `ppo.missing_eos_penalty` when the response never emitted a stop token, if set); GAE
   (gamma 1, lambda 0.99); advantages whitened over the whole rollout;
4. `ppo.ppo_epochs` passes over `ppo.mini_batches` shuffled mini-batches: clipped policy loss + clipped
   value loss, and the pretraining loss (ptx, coefficient 0.5) on `ppo.ptx_rows` packed rows from token
   shards per optimizer step; during the critic warm-up (`ppo.critic_warmup_updates`, 50) only the critic
   trains and the actor is not touched at all. `ppo.critic_rewarm_updates` (0) adds that many critic-only
   updates at the start of the run, before its `train.updates` (the rounds re-warm the critic after every
   reward-model patch: the new rewards would otherwise meet a critic fitted to the old ones).

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
- `metrics.jsonl`, one row per update ("step" = update index): reward_mean / reward_std (RM score), kl (KL to
  the reference, kl_to: "reference" or "actor_start"; sum over the response, mean over rows), kl_per_token,
  critic_rewarm, entropy, response_length, truncated_fraction, policy_loss, clip_fraction (None during the warm-up),
  value_loss, explained_variance, ptx_loss,
  ptx_eval_loss (with data.ptx_eval), true_reward (with a true-reward function), unknown_category,
  grad norms, rollout_tokens, rollout_tokens_per_s, update_s; `ppo.png` plots them;
- `rollouts/update-%06d.jsonl`, one line per rollout: update, row, query_index (line order among the kept
  queries), messages, category, domain (the condition used), response (text, stop token dropped),
  response_tokens (stop token included), rm_score, kl, truncated, true_reward (when given);
- `step-%08d/` checkpoints, `summary.json` (kl_reference: the reference's path), and at the end
  `final/actor` (HF checkpoint + tokenizer) and
  `final/critic` (reward-model format: a later run's `critic`).

Memory plan (InternLM2-7B on 8 x 80 GB) and the pre-check: `ilm.train.rlhf.ppo_memory`. The code, by seam:
`rollout` (generation), `scoring` (reference, critic, reward model; gathered), `update` (advantages, the PPO
epochs, the trained models), `ppo_log` (metrics, rollouts file, figure); this module is the driver.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ilm.model import build_model, packed_batch, positions_from_doc_ids
from ilm.model.hf import read_config
from ilm.train import checkpoint
from ilm.train.distributed import World, apply_fsdp, init_world
from ilm.train.metrics import run_name
from ilm.train.reward import DEFAULT_CONDITIONS
from ilm.train.reward_model import RewardModel, load_reward_weights, reward_model_on_meta, save_reward_model
from ilm.train.rlhf.ppo_log import PLOTTED, figure, metrics_row, plot, rollout_lines, write_atomic
from ilm.train.rlhf.ppo_memory import check_memory
from ilm.train.rlhf.queries import Query, demo_queries, load_queries, query_indices
from ilm.train.rlhf.rollout import rank_rollouts, sync_rollout_copy
from ilm.train.rlhf.scoring import Scorer, all_gather, all_sum
from ilm.train.rlhf.update import Critic, PPOModels, advantages, build_optimizer, optimise
from ilm.train.run import (
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

__all__ = ["PLOTTED", "Critic", "PPOConfig", "PPOData", "PPOModels", "PPOOptim", "PPOSection", "PPOTrain", "Query",
           "build_optimizer", "demo_queries", "figure", "load_queries", "plot", "query_indices", "train"]

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
    critic_rewarm_updates: int = 0  # critic-only updates added at the start of this run (after an RM change)
    ptx_coef: float = 0.5  # 0 switches the pretraining loss off
    ptx_rows: int = 4  # packed pretraining rows per optimizer step, all processes (tokens ~ the mini-batch's)
    ptx_window: int = 2048
    recompute_logprobs: bool = True  # old log-probs from a training forward, not sampling time: ratio 1 at first
    missing_eos_penalty: float | None = None  # added to the reward of a response without a stop token (e.g. -1)


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
    actor: str = ""  # HF checkpoint the actor starts from (`ilm sft` export)
    reference: str | None = None  # HF checkpoint of the KL reference (same shape); None: `actor`
    reward_model: str = ""  # `ilm rm train` export (run_dir/final)
    critic: str | None = None  # a reward-model-format export to start the critic from; None: reward_model
    true_reward: str | None = None  # "module:function" (query record, response text) -> float, logged only
    data: PPOData = field(default_factory=PPOData)
    ppo: PPOSection = field(default_factory=PPOSection)
    optim: PPOOptim = field(default_factory=PPOOptim)
    train: PPOTrain = field(default_factory=PPOTrain)


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
    for what, path in (("actor", cfg.actor), ("reference", cfg.reference), ("reward_model", cfg.reward_model),
                       ("critic", cfg.critic)):
        if path and not (Path(path) / "config.json").exists():
            raise FileNotFoundError(f"{what} {path}: not an HF checkpoint directory (no config.json)")
    if p.ptx_coef > 0 and not cfg.data.ptx:
        raise ValueError("ppo.ptx_coef > 0 needs data.ptx token shard dirs (or set ppo.ptx_coef = 0)")
    if p.critic_rewarm_updates < 0 or p.critic_warmup_updates < 0:
        raise ValueError("ppo.critic_warmup_updates and ppo.critic_rewarm_updates must be >= 0")
    penalty = p.missing_eos_penalty
    if penalty is not None and not (math.isfinite(penalty) and abs(penalty) <= 1e6):
        raise ValueError("ppo.missing_eos_penalty must be a finite number of magnitude <= 1e6 (rewards are fp32; "
                         f"e.g. -1), or unset; got {penalty}")
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
    for what, path in (("actor", cfg.actor), ("reference", cfg.reference), ("reward model", cfg.reward_model),
                       ("critic", cfg.critic)):
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
    if cfg.reference and model_shape(read_config(cfg.reference)[0]) != model_shape(read_config(cfg.actor)[0]):
        raise ValueError(f"the reference {cfg.reference} has another shape than the actor {cfg.actor}: the KL "
                         "reference must be the same architecture (e.g. the SFT model the actor came from)")
    if not (Path(cfg.reward_model) / "reward_config.json").exists():
        raise FileNotFoundError(f"{cfg.reward_model}: no reward_config.json; is this an `ilm rm train` export?")
    return str(tok_dir)


def _shard_frozen(model: nn.Module, core: nn.Module, world: World, fsdp: bool) -> None:
    """FSDP2 for a frozen model (reference, reward model) on several processes: its layers and then its root,
    as `prepare` does for the trained ones; no mixed precision (it is already in the dtype it runs in).
    Without FSDP (`train.fsdp = false`: DDP) every process holds it whole, as it holds the trained ones."""
    if world.size > 1 and fsdp:
        apply_fsdp(core)
        if model is not core:
            from torch.distributed.fsdp import fully_shard

            fully_shard(model)


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
    check_memory(actor_config, p, t, longest, world.size, dev)
    # the frozen ones are kept in bf16 when training in bf16 on GPU (the memory plan: ilm.train.rlhf.ppo_memory)
    frozen = torch.bfloat16 if t.precision == "bf16" and dev.type == "cuda" else torch.float32
    actor = build_model(actor_config, device="meta")
    prepare(actor, t, world)
    materialise(actor, world, t.seed, cfg.actor)
    ref = build_model(actor_config, device="meta", dtype=frozen).requires_grad_(False).eval()
    _shard_frozen(ref, ref, world, t.fsdp)
    materialise(ref, world, t.seed, cfg.reference or cfg.actor)
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
    kl_reference = str(cfg.reference or cfg.actor)  # the model every logged `kl` is measured against
    scorer = Scorer(ref, critic, rm, tok, meta, conditions, stop_ids, dev, autocast, pad_id, p.micro_batch_rows,
                    p.temperature)

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
    total = t.updates + p.critic_rewarm_updates  # the re-warm comes before the run's own updates
    bar = progress(world, t.progress, total, update)
    while update < total:
        t0 = time.perf_counter()
        actor_trains = update >= p.critic_rewarm_updates + p.critic_warmup_updates

        # 1. rollouts: this rank's generate calls
        picked = query_indices(len(queries), update, p.rollout_batch, t.seed)
        gen_model = actor
        if rollout_copy is not None:
            sync_rollout_copy(rollout_copy, actor)
            gen_model = rollout_copy
        rows, rollouts = rank_rollouts(gen_model, [queries[i].prompt for i in picked], stop_ids, p, world, t.seed,
                                       update)
        t_gen = time.perf_counter() - t0

        # 2. reference log-probs, values, rewards for these rows; every rank's rows, in row order
        mine, rm_cut = scorer.score(rollouts, [queries[picked[i]] for i in rows], rows,
                                    actor if p.recompute_logprobs else None)
        everything = sorted((x for part in all_gather(mine, world) for x in part), key=lambda x: x["row"])
        rm_cut = int(all_sum([rm_cut], world)[0])

        # 3. rewards, advantages (the same on every rank)
        roll = advantages(everything, p)

        # 4. PPO epochs over mini-batches
        sums, steps, grad_norms = optimise(models, optimizer, roll, p, cfg.optim.grad_clip, world, t.seed, update,
                                           actor_trains, packer, dev, autocast, pad_id)
        update += 1

        # 5. metrics, rollouts file, checkpoint
        tot = all_sum([sums["pg"], sums["clip"], sums["vf"], sums["ptx"], sums["ptx_n"]], world)
        row_queries = [queries[picked[x["row"]]] for x in everything]
        texts = [x["text"] for x in everything] if world.is_main else []
        true = None
        if reward_fn is not None and world.is_main:
            true = [float(reward_fn(q.record, s)) for q, s in zip(row_queries, texts)]
        row = metrics_row(update, actor_trains, roll, everything, tot, steps, grad_norms,
                          sum(q.unknown_category for q in row_queries), rm_cut, p.ppo_epochs, t_gen, t0)
        row["critic_rewarm"] = update <= p.critic_rewarm_updates
        row["kl_to"] = "reference" if cfg.reference else "actor_start"  # summary.json: the checkpoint's path
        if eval_rows is not None:
            row["ptx_eval_loss"] = ptx_eval_loss()
        if true is not None:
            row["true_reward"] = float(np.mean(true))
        metrics.log(update, **row)
        if world.is_main:
            write_atomic(rollouts_dir / f"update-{update:06d}.jsonl",
                         rollout_lines(update, everything, row_queries, roll["kl"], texts, true))
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"reward": f"{row['reward_mean']:.3f}", "kl": f"{row['kl']:.3f}",
                             "vloss": f"{row['value_loss']:.3f}", "len": f"{row['response_length']:.0f}"})
        if stop_requested(world) or update % t.checkpoint_every == 0 or update == total:
            extra = {"model_config": shape, "data": data_id, "stage": "ppo", "ptx_eval_start": start_eval,
                     "ptx": packer.state_dict() if packer is not None else None}
            checkpoint.save(run_dir, update, models, optimizer, extra=extra, keep_last=t.keep_last)
        raise_if_stopped(update)
    if bar is not None:
        bar.close()

    summary: dict[str, Any] = {"updates": update, "run_dir": str(run_dir), "data": report, "kl_reference": kl_reference,
                               "last": metrics.rows[-1] if metrics.rows else None,
                               "ptx_eval_loss_start": start_eval, "rollouts": str(rollouts_dir),
                               "config": asdict(cfg)}
    if update == total:
        summary["export"] = export(models, run_dir / "final", meta, tok_dir, world)
    if world.is_main:
        summary["plot"] = str(plot(metrics.rows, run_dir / "ppo.png", f"{run_name(run_dir)}: PPO",
                                         p.critic_rewarm_updates + p.critic_warmup_updates))
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
