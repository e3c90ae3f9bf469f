"""`ilm pretrain RECIPE.toml`: multi-stage pretraining, one explicit loop (docs/recipe.md, Pretraining).

setup (world, model, optimiser, resume) -> for each stage: set RoPE, pack rows of the stage's window from
its mixture, train its share of the token budget -> export an HF InternLM2 checkpoint.

The learning-rate schedule spans all stages; each stage continues from the previous one's state. A
checkpoint holds the global step, the stage, the packer's exact position and the RNG states, so a resumed
run produces the same losses as one that never stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ilm.data.packing import Packer, packed_labels
from ilm.data.shards import TokenShards
from ilm.model import AttnBatch, build_model, get_preset, packed_batch, positions_from_doc_ids
from ilm.model.config import ModelConfig
from ilm.model.rope import Rope
from ilm.train import checkpoint
from ilm.train.distributed import (
    World,
    init_world,
)
from ilm.train.losses import IGNORE_INDEX
from ilm.train.metrics import peak_flops
from ilm.train.optim import OptimConfig, build_optimizer, lr_at, set_lr
from ilm.train.run import (
    accumulate,
    autocast_for,
    determinism,
    materialise,
    model_shape,
    nothing_to_do,
    prepare,
    progress,
    raise_if_stopped,
    start,
    stop_requested,
)


@dataclass
class ModelSection:
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # any ModelConfig field


@dataclass
class SourceConfig:
    name: str = ""
    path: str = ""  # a token shard directory (`ilm pretrain tokenize`)


@dataclass
class StageConfig:
    name: str = ""
    window: int = 4096
    fraction: float = 1.0  # share of train.total_tokens
    rope_theta: float | None = None  # None: keep the previous stage's base
    max_position_embeddings: int | None = None  # None: keep the previous stage's
    mixture: dict[str, float] = field(default_factory=dict)  # source name -> weight


@dataclass
class TrainConfig:
    total_tokens: int = 2_600_000_000_000
    batch_tokens: int = 4 * 1024 * 1024  # per optimizer step, all processes together
    micro_batch_rows: int = 1  # rows per forward, per process
    reduce_every_micro_batch: bool = False  # FSDP: reduce-scatter gradients in every micro-batch, not once per step
    # (once per step holds full-size fp32 gradients between micro-batches: 4 bytes/parameter on every GPU)
    seed: int = 0
    precision: str = "bf16"  # "bf16" autocast with fp32 master weights, or "fp32"
    device: str = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    fsdp: bool = True  # shard with FSDP2 when there is more than one process
    checkpoint_every: int = 1000  # optimizer steps
    keep_last: int = 3
    eval_every: int = 1000
    eval_rows: int = 16
    eval_source: str | None = None  # token shard directory held out from training
    log_every: int = 1
    deterministic: bool = False
    document_masks: bool = True  # False: attend across packed documents (plain causal rows; a baseline)
    peak_flops: float | None = None  # for MFU where the device's peak is not known
    progress: bool = True
    max_steps: int | None = None  # stop early (smoke tests); the schedule still spans the full run


@dataclass
class PretrainConfig:
    run_dir: str = "runs/pretrain"
    tokenizer: str | None = None  # copied next to the exported checkpoint
    model: ModelSection = field(default_factory=ModelSection)
    sources: list[SourceConfig] = field(default_factory=list)
    stages: list[StageConfig] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class StagePlan:
    index: int
    config: StageConfig
    model_config: ModelConfig
    steps: int
    rows_per_step: int
    accum: int
    first_step: int


def plan_stages(cfg: PretrainConfig, world_size: int = 1) -> list[StagePlan]:
    """Steps, rows and accumulation per stage; every inconsistency is an error naming the stage and the fix."""
    if not cfg.stages:
        raise ValueError("the recipe has no [[stages]]")
    total = sum(s.fraction for s in cfg.stages)
    if total > 1.0 + 1e-9:
        raise ValueError(f"stage fractions sum to {total:g} > 1: " + ", ".join(f"{s.name}={s.fraction}" for s in cfg.stages))
    names = {s.name for s in cfg.sources}
    model_cfg = get_preset(cfg.model.preset, **cfg.model.overrides)
    plans, first = [], 0
    for i, st in enumerate(cfg.stages):
        changes = {}
        if st.rope_theta is not None:
            changes["rope_theta"] = float(st.rope_theta)
        if st.max_position_embeddings is not None:
            changes["max_position_embeddings"] = st.max_position_embeddings
        new_cfg = model_cfg.replace(**changes) if changes else model_cfg
        if st.window > new_cfg.max_position_embeddings:
            raise ValueError(
                f"stage {st.name!r}: window {st.window} exceeds max_position_embeddings "
                f"{new_cfg.max_position_embeddings}; raise max_position_embeddings for this stage together with "
                "its RoPE base (rope_theta), as the 32k stage does"
            )
        unknown = sorted(set(st.mixture) - names)
        if unknown:
            raise ValueError(f"stage {st.name!r}: mixture names unknown sources {unknown}; known: {sorted(names)}")
        per_step_rows = cfg.train.batch_tokens // st.window
        per_micro = cfg.train.micro_batch_rows * world_size
        if per_step_rows < 1 or per_step_rows % per_micro:
            raise ValueError(
                f"stage {st.name!r}: batch_tokens {cfg.train.batch_tokens} is {per_step_rows} rows of {st.window}, "
                f"not a multiple of micro_batch_rows x processes = {per_micro}"
            )
        steps = max(1, round(cfg.train.total_tokens * st.fraction / cfg.train.batch_tokens))
        plans.append(StagePlan(i, st, new_cfg, steps, per_step_rows, per_step_rows // per_micro, first))
        first += steps
        model_cfg = new_cfg
    return plans


def _attention(doc_ids: torch.Tensor, document_masks: bool = True) -> tuple[torch.Tensor | None, AttnBatch]:
    """Positions and attention pattern for packed rows (plain causal rows when masks are off)."""
    if not document_masks:
        return None, AttnBatch()
    return positions_from_doc_ids(doc_ids), packed_batch(doc_ids)


def _micro_batch(packer: Packer, rows: int, world: World, document_masks: bool) -> tuple[torch.Tensor, ...]:
    """This process's share of the next micro-batch (every process packs the same global rows): ids, doc ids,
    labels, on the CPU (the step counts its trained tokens before any forward)."""
    ids, doc_ids = packer.next_batch(rows * world.size)
    ids, doc_ids = ids[world.rank * rows : (world.rank + 1) * rows], doc_ids[world.rank * rows : (world.rank + 1) * rows]
    if not document_masks:
        doc_ids = torch.zeros_like(doc_ids)
    return ids, doc_ids, packed_labels(ids, doc_ids)


def _shards(cfg: PretrainConfig) -> dict[str, TokenShards]:
    return {s.name: TokenShards(s.path) for s in cfg.sources}


def _set_rope(model: torch.nn.Module, config: ModelConfig) -> None:
    model.config = config
    model.rope = Rope(config)


@torch.no_grad()
def evaluate(model, shards: TokenShards, window: int, rows: int, world: World, autocast) -> float:
    """Mean next-token loss on fixed held-out rows (the same rows every time)."""
    model.eval()
    packer = Packer({"eval": shards}, {"eval": 1.0}, window, seed=12345)
    ids, doc_ids = packer.next_batch(rows)
    ids, doc_ids = ids.to(world.device), doc_ids.to(world.device)
    with autocast():
        loss = model(ids, *_attention(doc_ids), labels=packed_labels(ids, doc_ids))
    model.train()
    return float(loss)


def train(cfg: PretrainConfig, resume: str = "auto") -> dict[str, Any]:
    """Run (or resume) the recipe; returns a summary (steps, losses, export and plot paths)."""
    with determinism(cfg.train.deterministic, cfg.train.device):
        return _train(cfg, resume)


def _train(cfg: PretrainConfig, resume: str) -> dict[str, Any]:
    world = init_world(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    plans = plan_stages(cfg, world.size)
    total_steps = plans[-1].first_step + plans[-1].steps
    run_dir = Path(cfg.run_dir)
    shards = _shards(cfg)
    eval_shards = TokenShards(cfg.train.eval_source) if cfg.train.eval_source else None
    vocab = plans[0].model_config.vocab_size
    for name, s in [*shards.items(), *([("eval_source", eval_shards)] if eval_shards else [])]:
        top = s.max_token_id()  # from the parts' metadata: start-up reads no token
        if top >= vocab:
            raise ValueError(f"source {name!r} ({s.path}) has token id {top} >= vocab {vocab}")

    model = build_model(plans[0].model_config, device="meta")  # shapes only: weights come per shard
    shape = model_shape(plans[0].model_config)
    prepare(model, cfg.train, world)
    materialise(model, world, cfg.train.seed)
    optimizer = build_optimizer(model, cfg.optim)
    autocast = autocast_for(world, cfg.train.precision)
    step, rest, metrics = start(run_dir, resume, model, optimizer, shape, world)
    packer_state, stage_index = rest.get("packer"), rest.get("stage", 0)
    # The RoPE of the stage the checkpoint belongs to, before anything reads model.config: a run resumed at
    # its end never enters the loop below, and must not export the weights under stage 1's settings.
    _set_rope(model, plans[min(stage_index, len(plans) - 1)].model_config)

    peak = peak_flops(world.device, cfg.train.peak_flops)
    stop_at = min(total_steps, cfg.train.max_steps) if cfg.train.max_steps else total_steps
    if step and step >= stop_at:  # nothing to train: keep the export and summary the run already wrote
        metrics.close()
        return nothing_to_do(run_dir, step, total_steps, cfg.train.max_steps, world)
    bar = progress(world, cfg.train.progress, stop_at, step)
    last_eval = None

    def token_mean(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        ids, doc_ids, labels = (x.to(world.device) for x in batch)
        with autocast():
            return model(ids, *_attention(doc_ids, cfg.train.document_masks), labels=labels)

    for plan in plans[stage_index:]:
        if step >= stop_at:
            break
        _set_rope(model, plan.model_config)
        weights = plan.config.mixture or {s.name: 1.0 for s in cfg.sources}
        packer = Packer(shards, weights, plan.config.window, seed=cfg.train.seed * 1000 + plan.index)
        if packer_state is not None and plan.index == stage_index:
            packer.load_state_dict(packer_state)
        flops_per_token = plan.model_config.flops_per_token(plan.config.window)["total"]
        micro_rows = cfg.train.micro_batch_rows
        while step < plan.first_step + plan.steps and step < stop_at:
            t0 = time.perf_counter()
            lr = lr_at(step, total_steps, cfg.optim)
            set_lr(optimizer, lr)
            micro = [_micro_batch(packer, micro_rows, world, cfg.train.document_masks) for _ in range(plan.accum)]
            counts = [int((labels != IGNORE_INDEX).sum()) for _, _, labels in micro]
            loss_value, _ = accumulate(model, micro, counts, token_mean, world,  # token-weighted over the step
                                       cfg.train.reduce_every_micro_batch)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            tps = plan.rows_per_step * plan.config.window / dt
            row = {"stage": plan.config.name, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                   "tokens_per_s": tps, "tokens": step * cfg.train.batch_tokens}
            if peak:
                row["mfu"] = tps * flops_per_token / (peak * world.size)
            if eval_shards is not None and (step % cfg.train.eval_every == 0 or step == stop_at):
                row["eval_loss"] = last_eval = evaluate(
                    model, eval_shards, plan.config.window, cfg.train.eval_rows, world, autocast)
            if step % cfg.train.log_every == 0 or "eval_loss" in row:
                metrics.log(step, **row)
            if bar is not None:
                bar.update(1)
                post = {"stage": plan.config.name, "loss": f"{loss_value:.3f}", "tok/s": f"{tps:,.0f}"}
                if peak:
                    post["MFU"] = f"{row['mfu']:.1%}"
                bar.set_postfix(post)
            end_of_stage = step == plan.first_step + plan.steps
            if stop_requested(world) or step % cfg.train.checkpoint_every == 0 or end_of_stage or step == stop_at:
                next_stage = plan.index + 1 if end_of_stage else plan.index
                checkpoint.save(run_dir, step, model, optimizer, keep_last=cfg.train.keep_last, extra={
                    "stage": min(next_stage, len(plans) - 1),
                    "packer": None if end_of_stage else packer.state_dict(),
                    "model_config": shape,
                })
            raise_if_stopped(step)
        packer_state = None
    if bar is not None:
        bar.close()
    summary = {"steps": step, "total_steps": total_steps, "final_loss": metrics.rows[-1]["loss"] if metrics.rows else None,
               "eval_loss": last_eval, "run_dir": str(run_dir)}
    if step == total_steps:
        summary["export"] = str(export(model, run_dir / "final", cfg.tokenizer, world))
    if world.is_main:
        summary["plot"] = str(metrics.plot(stage="pretraining"))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    metrics.close()
    return summary


def export(model, path: Path, tokenizer_dir: str | None, world: World) -> Path:
    """HF InternLM2 checkpoint of the (possibly sharded) model, with the tokenizer files beside it; streamed
    shard by shard (`ilm.train.export`), so no rank ever holds the whole model. Every rank calls it."""
    from ilm.train.export import export_hf, model_state, tokenizer_files

    return export_hf(model_state(model), model.config, path, tokenizer_files(tokenizer_dir))


def unigram_entropy(shards: TokenShards) -> float:
    """Entropy (nats/token) of the corpus's unigram distribution: the loss of the best context-free model."""
    import numpy as np

    counts = shards.token_counts()  # the parts' histograms, written at tokenization
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


