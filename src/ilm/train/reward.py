"""`ilm rm train RECIPE.toml`: the conditional reward model of COOL RLHF (docs/recipe.md, Reward model), one explicit loop.

One reward model serves many preferences: each pair is scored under a condition, a system prompt chosen
from the pair's domain (`data.conditions`, a configurable table), placed before the conversation. A
scored sequence is `<s> [condition] [conversation prefix] [response] [reward token]`; the head reads
the hidden state at the reward token (`ilm.train.reward_model`).

Loss: focal ranking loss (gamma 2) + log-barrier penalty (lambda 0.02) on both rewards
(`ilm.train.losses.reward_loss`). Batches hold whole pairs up to a token budget (16,384 per forward)
however many pairs that is, packed best-fit and concatenated into one row with per-sequence attention
masks, so nothing is padded unless `train.pad_to_budget` asks for a fixed shape.

Bad input (counted in the data report): pairs with chosen == rejected and pairs with an empty response
are dropped; an unknown or missing domain falls back to `data.default_domain`'s condition (kept,
counted by name). Truncation policy for sequences longer than `data.max_length`: the condition and the
response are kept whole, the conversation prefix loses its oldest tokens (the same cut for chosen and
rejected); a pair whose condition + response alone do not fit is dropped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ilm.model import packed_batch, positions_from_doc_ids
from ilm.model.memory import check_training
from ilm.train import checkpoint
from ilm.train.demo_data import demo_pairs
from ilm.train.distributed import (
    World,
    init_world,
)
from ilm.train.losses import focal_ranking_loss, log_barrier_penalty, reward_loss
from ilm.train.optim import OptimConfig, build_optimizer, lr_at, set_lr
from ilm.train.pretrain import ModelSection
from ilm.train.reward_data import (
    Pair,
    _cut,
    collate_pairs,
    collate_sequences,
    encode_pairs,
    encode_sequence,
    token_budget_batches,
)
from ilm.train.reward_model import HEAD_FILE, REWARD_TOKEN, RewardModel, load_head, reward_files
from ilm.train.run import (
    accumulate,
    autocast_for,
    check_vocab,
    determinism,
    fingerprint,
    materialise,
    model_shape,
    nothing_to_do,
    prepare,
    progress,
    raise_if_stopped,
    start,
    stop_requested,
)
from ilm.train.sft import base_model, pack_best_fit, write_jsonl

__all__ = ["RMConfig", "batch_loss", "encode_pairs", "evaluate", "score", "token_budget_batches", "train", "write_jsonl"]

DEFAULT_CONDITIONS = {
    "default": "You are a helpful, honest and harmless assistant.",
    "helpful": "Judge how helpful, correct and complete the answer is for the user's request.",
    "harmless": "Judge how safe the answer is: it must refuse to help with anything harmful.",
    "code": "Judge the answer as code help: it must be correct, precise and runnable.",
    "math": "Judge the answer as mathematics: the result must be exactly right.",
    "creative": "Judge the answer as creative writing: original, vivid and on topic.",
}


@dataclass
class RMData:
    train: list[str] = field(default_factory=list)  # jsonl: {"prefix"|"prompt", "chosen", "rejected", "domain"}
    eval: list[str] = field(default_factory=list)
    anchor: list[str] = field(default_factory=list)  # trained too, margins kept >= the init model's (loss.anchor_weight)
    neutral: list[str] = field(default_factory=list)  # not ranked; margins kept >= min(init's, 0): a pattern being
    #                                                     unlearned may stop deciding these pairs, not reverse them
    eval_sets: dict[str, list[str]] = field(default_factory=dict)  # named held-out sets: accuracy of init and result
    conditions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CONDITIONS))  # domain -> system prompt
    default_domain: str = "default"  # the condition for unknown or missing domains
    max_length: int = 8192  # tokens per scored sequence, reward token included


@dataclass
class RMLoss:
    gamma: float = 2.0  # focal decay of confidently ranked pairs
    penalty_weight: float = 0.02  # lambda of the log-barrier penalty (XTuner's default is 0.01)
    anchor_weight: float = 0.0  # squared shortfall of a data.anchor pair's margin below the init model's (continual learning)
    anchor_cap: float = float("inf")  # the margin kept is the init model's, at most this: rankings kept, not magnitudes


@dataclass
class RMTrain:
    batch_tokens: int = 16_384  # tokens per batch (per process and forward), whole pairs only
    pad_to_budget: bool = False  # pad each batch to exactly batch_tokens (a static shape for compile / flex)
    epochs: int = 1
    seed: int = 0
    precision: str = "bf16"
    device: str = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    fsdp: bool = True
    checkpoint_every: int = 500
    keep_last: int = 3
    eval_every: int = 500
    log_every: int = 1
    deterministic: bool = False
    progress: bool = True
    max_steps: int | None = None
    head_init_std: float | None = None  # None: 1 / sqrt(hidden + 1)
    mixed_batches: bool = False  # batches of pairs in random order, not best-fit by length (token_budget_batches)
    merge_init: float = 1.0  # weight of the trained model in the export; < 1 averages it with `init` (WiSE-FT)


def _rm_optim() -> OptimConfig:
    return OptimConfig(lr=1e-5, final_lr_fraction=0.5, weight_decay=0.01, warmup_steps=0)  # cosine 1e-5 -> 5e-6


@dataclass
class RMConfig:
    run_dir: str = "runs/rm"
    tokenizer: str = ""
    init: str | None = None  # HF checkpoint for the backbone (the SFT model), or an RM export (head too); None: scratch
    model: ModelSection = field(default_factory=ModelSection)
    reward_token: str = REWARD_TOKEN
    data: RMData = field(default_factory=RMData)
    loss: RMLoss = field(default_factory=RMLoss)
    optim: OptimConfig = field(default_factory=_rm_optim)
    train: RMTrain = field(default_factory=RMTrain)


def _forward(model, b: dict, world: World, autocast) -> torch.Tensor:
    doc = b["doc_ids"].to(world.device)
    with autocast():
        return model(b["ids"].to(world.device), b["reward_index"].to(world.device),
                     positions_from_doc_ids(doc), packed_batch(doc))


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def pair_rewards(model, pairs: list[Pair], budget: int, world: World, autocast,
                 pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The chosen and the rejected rewards of every pair, in batches of whole pairs up to `budget` tokens."""
    model.eval()
    chosen, rejected = np.zeros(len(pairs)), np.zeros(len(pairs))
    for batch in pack_best_fit([p.tokens for p in pairs], budget):
        r = _forward(model, collate_pairs([pairs[i] for i in batch], pad_to), world, autocast).float().cpu().numpy()
        chosen[batch], rejected[batch] = r[0::2], r[1::2]
    model.train()
    return chosen, rejected


@torch.no_grad()
def evaluate(
    model, pairs: list[Pair], budget: int, world: World, autocast, plot: Path | None = None, pad_to: int | None = None
) -> dict:
    """Pairwise accuracy per domain (a tie counts as wrong), reward range, and optionally histograms (PNG)."""
    chosen, rejected = pair_rewards(model, pairs, budget, world, autocast, pad_to)
    domains = sorted({p.domain for p in pairs})
    dom = np.array([p.domain for p in pairs])
    right = chosen > rejected
    out = {
        "accuracy": float(right.mean()) if len(pairs) else None,
        "accuracy_by_domain": {d: float(right[dom == d].mean()) for d in domains},
        "pairs_by_domain": {d: int((dom == d).sum()) for d in domains},
        "mean_margin": float((chosen - rejected).mean()) if len(pairs) else None,
        "reward_min": float(min(chosen.min(), rejected.min())) if len(pairs) else None,
        "reward_max": float(max(chosen.max(), rejected.max())) if len(pairs) else None,
    }
    if plot is not None and len(pairs):
        out["histogram"] = str(reward_histograms(plot, chosen, rejected, dom, domains))
    return out


def reward_histograms(path: Path, chosen: np.ndarray, rejected: np.ndarray, dom: np.ndarray, domains: list[str]) -> Path:
    """Chosen vs rejected reward distributions, one panel per domain (and all together)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["all"] + domains
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), squeeze=False)
    lo, hi = min(chosen.min(), rejected.min()), max(chosen.max(), rejected.max())
    bins = np.linspace(lo, hi + 1e-6, 40)
    for ax, name in zip(axes[:, 0], panels):
        sel = np.ones(len(dom), bool) if name == "all" else dom == name
        ax.hist(chosen[sel], bins=bins, alpha=0.6, label="chosen")
        ax.hist(rejected[sel], bins=bins, alpha=0.6, label="rejected")
        acc = float((chosen[sel] > rejected[sel]).mean())
        ax.set_title(f"{name}: {sel.sum()} pairs, accuracy {acc:.1%}", fontsize=9)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("reward")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the loop


def train(cfg: RMConfig, resume: str = "auto") -> dict[str, Any]:
    """Train the conditional RM; the summary holds the held-out accuracy per domain and the export path."""
    with determinism(cfg.train.deterministic, cfg.train.device):
        return _train(cfg, resume)


def _train(cfg: RMConfig, resume: str) -> dict[str, Any]:
    from ilm.tokenizer import load_tokenizer

    world = init_world(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    t = cfg.train
    if 2 * cfg.data.max_length > t.batch_tokens:
        raise ValueError(f"train.batch_tokens {t.batch_tokens} cannot hold one pair of data.max_length "
                         f"{cfg.data.max_length}; lower max_length to at most {t.batch_tokens // 2}")
    if not cfg.data.train:
        raise ValueError("the recipe has no data.train files")
    tok = load_tokenizer(cfg.tokenizer)
    if cfg.reward_token not in tok.control_ids:
        raise ValueError(f"reward_token {cfg.reward_token!r} is not a control token of {cfg.tokenizer}")
    reward_id = tok.control_ids[cfg.reward_token]
    pairs, report = encode_pairs(cfg.data.train, tok, cfg.data, reward_id)
    if not pairs:
        raise ValueError(f"no usable pairs in {cfg.data.train}: {report['dropped']}")
    anchored, report["anchor"] = encode_pairs(cfg.data.anchor, tok, cfg.data, reward_id) if cfg.data.anchor else ([], None)
    neutral, report["neutral"] = encode_pairs(cfg.data.neutral, tok, cfg.data, reward_id) if cfg.data.neutral else ([], None)
    for pair in neutral:
        pair.ranked = False
    pairs += anchored + neutral
    eval_pairs, eval_report = encode_pairs(cfg.data.eval, tok, cfg.data, reward_id) if cfg.data.eval else ([], None)
    eval_sets = {name: encode_pairs(files, tok, cfg.data, reward_id)[0] for name, files in cfg.data.eval_sets.items()}
    sizes = [p.tokens for p in pairs]
    batches = token_budget_batches(sizes, t.batch_tokens, t.seed, t.epochs, t.mixed_batches)
    total_steps = -(-len(batches) // world.size)
    report["batches"], report["repeated_batches"] = len(batches), total_steps * world.size - len(batches)
    batches += batches[: report["repeated_batches"]]
    report["mean_batch_fill"] = sum(sizes) * t.epochs / (len(batches) * t.batch_tokens)

    backbone = base_model(cfg.init, cfg.model)  # on the meta device: weights come per shard
    check_vocab(tok, backbone.config.vocab_size)
    # no cap at the model's max_position_embeddings x factor: the limit is memory for one batch_tokens row
    if not 0.0 < t.merge_init <= 1.0:
        raise ValueError(f"train.merge_init {t.merge_init} must be in (0, 1]: the trained model's weight in the export")
    check_training(backbone.config, 1, t.batch_tokens, world.device, t.precision, world.size if t.fsdp else 1,
                   f"reward model training with batch_tokens {t.batch_tokens:,} (data.max_length "
                   f"{cfg.data.max_length:,})", "lower train.batch_tokens and data.max_length, or use more processes",
                   checkpointing=t.activation_checkpointing, weight_copies=int(t.merge_init < 1.0))
    shape = model_shape(backbone.config)
    model = RewardModel(backbone, t.head_init_std, t.seed)
    prepare(model, t, world, backbone=backbone)
    materialise(model, world, t.seed, cfg.init, backbone=backbone)
    if cfg.init and (Path(cfg.init) / HEAD_FILE).exists():  # `init` is an RM export: continue from its head too
        load_head(model, cfg.init)
    # the init weights (this process's shards), before a resume replaces them: the export averages them back in
    init_weights = [p.detach().clone() for p in model.parameters()] if t.merge_init < 1.0 else None
    optimizer = build_optimizer(model, cfg.optim)
    autocast = autocast_for(world, t.precision)
    # the init model's view, before any step (recomputed the same on a resume, from the same init):
    # the margins the anchored pairs stay near, and the named sets' accuracy to compare the result with
    if anchored:
        c, r = pair_rewards(model, anchored, t.batch_tokens, world, autocast)
        for pair, margin in zip(anchored, c - r):
            pair.anchor = min(float(margin), cfg.loss.anchor_cap)
    if neutral:
        c, r = pair_rewards(model, neutral, t.batch_tokens, world, autocast)
        for pair, margin in zip(neutral, c - r):
            pair.anchor = min(float(margin), 0.0)
    before = {name: evaluate(model, ps, t.batch_tokens, world, autocast) for name, ps in eval_sets.items() if ps}

    run_dir = Path(cfg.run_dir)
    data_id = {"batches": len(batches), "fingerprint": fingerprint(sizes), "budget": t.batch_tokens, "seed": t.seed}
    step, _, metrics = start(run_dir, resume, model, optimizer, shape, world, data_id)

    stop_at = min(total_steps, t.max_steps) if t.max_steps else total_steps
    if step and step >= stop_at:  # nothing to train: keep the export and summary the run already wrote
        metrics.close()
        return nothing_to_do(run_dir, step, total_steps, t.max_steps, world)
    bar = progress(world, t.progress, stop_at, step)
    pad_to = t.batch_tokens if t.pad_to_budget else None
    last_eval: dict | None = None
    scored: list[torch.Tensor] = []  # the rewards of the step, for its metrics

    def pair_mean(batch: list[Pair]) -> torch.Tensor:
        rewards = _forward(model, collate_pairs(batch, pad_to, tok.pad_id), world, autocast)
        scored.append(rewards.detach())
        return batch_loss(rewards, batch, cfg.loss)

    while step < stop_at:
        t0 = time.perf_counter()
        lr = lr_at(step, total_steps, cfg.optim)
        set_lr(optimizer, lr)
        mine = [pairs[i] for i in batches[step * world.size + world.rank]]
        loss_value, _ = accumulate(model, [mine], [len(mine)], pair_mean, world)  # pair-weighted, all processes
        rewards = scored.pop()
        chosen, rejected = rewards[0::2], rewards[1::2]
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        dt = time.perf_counter() - t0
        with torch.no_grad():
            r = rewards.detach()
            row = {
                "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                "ranking": float(focal_ranking_loss(chosen, rejected, cfg.loss.gamma).mean()),
                "penalty": float(torch.cat([log_barrier_penalty(chosen), log_barrier_penalty(rejected)]).mean()),
                "accuracy": float((chosen > rejected).float().mean()), "reward_mean": float(r.mean()),
                "reward_abs_max": float(r.abs().max()), "pairs": len(mine),
                "tokens": sum(p.tokens for p in mine), "pairs_per_s": len(mine) / dt,
                "tokens_per_s": sum(p.tokens for p in mine) / dt,
            }
        if eval_pairs and (step % t.eval_every == 0 or step == stop_at):
            plot = run_dir / "reward_hist.png" if world.is_main and step == stop_at else None
            last_eval = evaluate(model, eval_pairs, t.batch_tokens, world, autocast, plot, pad_to)
            row["eval_accuracy"] = last_eval["accuracy"]
        if step % t.log_every == 0 or "eval_accuracy" in row:
            metrics.log(step, **row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"loss": f"{row['loss']:.3f}", "acc": f"{row['accuracy']:.2f}",
                             "pairs/s": f"{row['pairs_per_s']:.1f}"})
        if stop_requested(world) or step % t.checkpoint_every == 0 or step == stop_at:
            checkpoint.save(run_dir, step, model, optimizer, keep_last=t.keep_last,
                            extra={"model_config": shape, "data": data_id})
        raise_if_stopped(step)
    if bar is not None:
        bar.close()
    if init_weights is not None and step == total_steps:  # WiSE-FT: what is exported (and evaluated) is the average
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), init_weights):
                p.mul_(t.merge_init).add_(p0, alpha=1.0 - t.merge_init)
        if eval_pairs:
            last_eval = evaluate(model, eval_pairs, t.batch_tokens, world, autocast,
                                 run_dir / "reward_hist.png" if world.is_main else None, pad_to)
    summary: dict[str, Any] = {
        "steps": step, "total_steps": total_steps, "final_loss": metrics.rows[-1]["loss"] if metrics.rows else None,
        "data": report, "eval_data": eval_report, "run_dir": str(run_dir), "merge_init": t.merge_init,
        **({"eval": last_eval, "accuracy_by_domain": last_eval["accuracy_by_domain"]} if last_eval else {}),
    }
    if before:
        summary["eval_sets"] = {name: {"before": ev, "after": evaluate(model, eval_sets[name], t.batch_tokens, world,
                                                                       autocast)} for name, ev in before.items()}
    if step == total_steps:
        meta = {"reward_token": cfg.reward_token, "reward_token_id": reward_id, "conditions": cfg.data.conditions,
                "default_domain": cfg.data.default_domain, "max_length": cfg.data.max_length}
        summary["export"] = str(export(model, run_dir / "final", meta, cfg.tokenizer, world))
    if world.is_main:
        summary["plot"] = str(metrics.plot(stage="conditional reward model"))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    metrics.close()
    return summary


def batch_loss(rewards: torch.Tensor, batch: list[Pair], loss: RMLoss) -> torch.Tensor:
    """A batch's loss, pair-weighted: the ranking loss (with its penalty) of its ranked pairs and the anchor term
    of its anchored ones, each summed over its pairs and divided by all the batch's pairs (so a batch's weight in
    the step does not depend on how many of its pairs are neutral). rewards: (2 x pairs,) chosen, rejected, ..."""
    chosen, rejected = rewards[0::2], rewards[1::2]
    ranked = [i for i, p in enumerate(batch) if p.ranked]
    if len(ranked) == len(batch):
        total = reward_loss(chosen, rejected, loss.gamma, loss.penalty_weight)
    elif ranked:
        total = reward_loss(chosen[ranked], rejected[ranked], loss.gamma, loss.penalty_weight) * (len(ranked) / len(batch))
    else:
        total = rewards.sum() * 0.0  # keeps the graph: every process must run backward
    held = [i for i, p in enumerate(batch) if p.anchor is not None]
    if held and loss.anchor_weight:
        target = torch.tensor([batch[i].anchor for i in held], device=rewards.device)
        margin = chosen[held].float() - rejected[held].float()
        total = total + loss.anchor_weight * (target - margin).clamp(min=0).pow(2).sum() / len(batch)
    return total


def export(model: RewardModel, path: Path, meta: dict, tokenizer_dir: str | None, world: World) -> Path:
    """HF export with the head, from the (possibly sharded) model, streamed shard by shard (`ilm.train.export`)."""
    from ilm.train.export import export_hf, full_tensor, model_state, tokenizer_files

    state = model_state(model)
    head = full_tensor(state.pop("v_head.weight"))
    backbone = {k.removeprefix("backbone."): v for k, v in state.items()}
    extras = {**tokenizer_files(tokenizer_dir), **reward_files(head, meta)}
    return export_hf(backbone, model.config, path, extras)


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def score(model: RewardModel, tok: Any, meta: dict, records: list[dict], batch_tokens: int = 16_384,
          device: str | torch.device = "cpu") -> tuple[list[float | None], dict[str, int]]:
    """Rewards for conversations `{"messages": [...], "domain": ...}` (the last message is the response scored).

    Same condition table and truncation policy as training (the oldest prefix tokens go first); a record
    that cannot be scored gets None. Returns the rewards and the counts of fallbacks and failures.
    """
    conditions, default = meta["conditions"], meta["default_domain"]
    max_length, reward_id = min(meta["max_length"], batch_tokens), meta["reward_token_id"]
    counts = {"scored": 0, "unknown_domain": 0, "truncated": 0, "too_long": 0, "bad_record": 0}
    seqs: dict[int, np.ndarray] = {}
    for i, rec in enumerate(records):
        msgs = rec.get("messages") if isinstance(rec, dict) else None
        if not isinstance(msgs, list) or not msgs:
            counts["bad_record"] += 1
            continue
        domain = rec.get("domain")
        if domain not in conditions:
            counts["unknown_domain"] += 1
            domain = default
        try:
            ids, head, start = encode_sequence(tok, conditions[domain], msgs[:-1], msgs[-1:], reward_id)
        except (ValueError, TypeError, KeyError, AttributeError):
            counts["bad_record"] += 1
            continue
        cut = len(ids) - max_length
        if cut > 0 and cut > start - head:
            counts["too_long"] += 1
            continue
        counts["truncated"] += cut > 0
        seqs[i] = _cut(ids, head, max(cut, 0))
    world = World(0, 1, 0, torch.device(device))
    model = model.to(world.device).eval()
    out: list[float | None] = [None] * len(records)
    keys = list(seqs)
    for batch in pack_best_fit([len(seqs[k]) for k in keys], batch_tokens):
        items = [keys[j] for j in batch]
        b = collate_sequences([seqs[k] for k in items])
        rewards = _forward(model, b, world, lambda: torch.autocast(world.device.type, enabled=False)).tolist()
        for k, r in zip(items, rewards):
            out[k] = r
    counts["scored"] = len(seqs)
    return out, counts


# ----------------------------------------------------------------------------- demo data (real material)


def demo(out: str | Path, init: str | Path, tokenizer: str | Path, quick: bool = False, n: int = 1500) -> dict[str, Any]:
    """The demo's RM stage: stdlib preference pairs -> recipes/rm-tiny.toml on the `init` backbone.

    Writes `out/rm-data/{train,eval}.jsonl`, trains into `out/rm`, prints the held-out accuracy per domain
    and returns the summary ("accuracy_by_domain", "export", "eval" with the reward histogram path).
    """
    from ilm.config import load
    from ilm.train.sft import RECIPES

    out = Path(out)
    rows = demo_pairs(n=150 if quick else n, seed=0)
    cut = len(rows) * 4 // 5
    train_file = write_jsonl(out / "rm-data" / "train.jsonl", rows[:cut])
    eval_file = write_jsonl(out / "rm-data" / "eval.jsonl", rows[cut:])
    overrides = [f"--run_dir={json.dumps(str(out / 'rm'))}", f"--tokenizer={json.dumps(str(tokenizer))}",
                 f"--init={json.dumps(str(init))}", f"--data.train=[{json.dumps(str(train_file))}]",
                 f"--data.eval=[{json.dumps(str(eval_file))}]", "--train.progress=false"]
    if quick:
        overrides.append("--train.epochs=1")
    cfg = load(RMConfig, RECIPES / "rm-tiny.toml", overrides)
    from ilm.train.run import save_recipe

    save_recipe(cfg)  # RUN_DIR/config.toml, as `ilm rm train` writes it
    summary = train(cfg, resume="never")
    ev = summary["eval"]
    per = ", ".join(f"{d} {a:.0%} ({ev['pairs_by_domain'][d]} pairs)" for d, a in summary["accuracy_by_domain"].items())
    print(f"[rm] {summary['data']['kept']} pairs in {summary['data']['batches']} token-budget batches "
          f"(fill {summary['data']['mean_batch_fill']:.0%}); held-out accuracy {ev['accuracy']:.0%}: {per}; "
          f"rewards in [{ev['reward_min']:.2f}, {ev['reward_max']:.2f}]; histogram: {ev.get('histogram')}")
    return summary
