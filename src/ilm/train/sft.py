"""`ilm sft RECIPE.toml`: supervised fine-tuning on ChatML conversations, one explicit loop (docs/recipe.md, SFT).

setup (world, model from an HF checkpoint, optimiser, resume) -> render every conversation with the chat
format (loss mask = assistant tokens, tool calls and their `<|im_end|>`) -> pack whole conversations
into rows of `window` tokens with document masks -> train one epoch, lr 4e-5, cosine -> export an HF
InternLM2 checkpoint.

The packing plan is a pure function of the conversation lengths and the seed, so a checkpoint only needs
the step number: a resumed run sees the same rows and produces the same losses.

Bad input (counted in `report`, never silently): lines that are not JSON or have no valid `messages`,
conversations with no assistant token, and conversations longer than the window. Truncation policy:
`truncate` keeps the first `window` tokens (the system prompt and the earliest turns) and drops the
conversation only when no assistant token is left; `drop` drops every over-long conversation.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ilm.model import build_model, get_preset, packed_batch, positions_from_doc_ids
from ilm.model.memory import check_training
from ilm.train import checkpoint
from ilm.train.demo_data import demo_conversations
from ilm.train.distributed import (
    World,
    init_world,
)
from ilm.train.losses import IGNORE_INDEX, shift_labels
from ilm.train.optim import OptimConfig, build_optimizer, lr_at, set_lr
from ilm.train.pretrain import ModelSection, export
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

TRUNCATION = ("truncate", "drop")


@dataclass
class LongContextData:
    """Long-context conversations built at startup (`ilm.data.longctx`, docs/recipe.md, Long context and tools):
    repository files in dependency order and long documents concatenated to samples of `window` tokens, each
    followed by a question only the context answers; the loss is on the answer (the assistant part)."""

    repos: list[str] = field(default_factory=list)  # repository folders, or code pipeline outputs
    documents: list[str] = field(default_factory=list)  # long documents: text files, jsonl/parquet shards
    window: int = 0  # context tokens per sample; 0 = train.window - reserve
    reserve: int = 256  # tokens left for the question, the answer and the chat markup
    min_document_chars: int = 0
    max_conversations: int = 0  # 0 = every sample; else this many, drawn evenly by the seed (a data-mix knob)
    seed: int = 0


@dataclass
class SFTData:
    train: list[str] = field(default_factory=list)  # jsonl files: {"messages": [...], "tools": [...]?}
    eval: list[str] = field(default_factory=list)  # held-out conversations (loss only)
    truncation: str = "truncate"  # conversations longer than the window: "truncate" or "drop"
    long_context: LongContextData = field(default_factory=LongContextData)


@dataclass
class SFTTrain:
    window: int = 32768  # tokens per packed row
    batch_rows: int = 32  # rows per optimizer step, all processes together
    micro_batch_rows: int = 1  # rows per forward, per process
    reduce_every_micro_batch: bool = False  # FSDP: reduce-scatter gradients in every micro-batch, not once per step
    # (once per step holds full-size fp32 gradients between micro-batches: 4 bytes/parameter on every GPU)
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
    max_steps: int | None = None  # stop early; the schedule still spans the whole run


def _sft_optim() -> OptimConfig:
    # lr 4e-5 and cosine are the recipe's; warm-up, floor and weight decay are not in the seed (assumptions).
    return OptimConfig(lr=4e-5, warmup_steps=100, final_lr_fraction=0.1, weight_decay=0.0)


@dataclass
class SFTConfig:
    run_dir: str = "runs/sft"
    tokenizer: str = ""  # tokenizer directory; copied next to the export
    init: str | None = None  # HF checkpoint to start from (the pretrained model); None: `model` from scratch
    model: ModelSection = field(default_factory=ModelSection)
    data: SFTData = field(default_factory=SFTData)
    optim: OptimConfig = field(default_factory=_sft_optim)
    train: SFTTrain = field(default_factory=SFTTrain)


# ----------------------------------------------------------------------------- data


@dataclass
class Encoded:
    ids: np.ndarray  # int32 (n,)
    mask: np.ndarray  # uint8 (n,), 1 = a trained (assistant) token


def read_jsonl(paths: Iterable[str | Path]) -> Iterable[tuple[str, Any]]:
    """(where, parsed object or the JSONDecodeError) for every non-empty line of every file."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield f"{path}:{n}", json.loads(line)
                    except json.JSONDecodeError as err:
                        yield f"{path}:{n}", err


def encode_conversations(
    paths: Iterable[str | Path], tok: Any, window: int, truncation: str = "truncate"
) -> tuple[list[Encoded], dict[str, Any]]:
    """Render each conversation (ids + assistant mask), apply the truncation policy, count every drop."""
    return encode_records(read_jsonl(paths), tok, window, truncation)


def encode_records(
    records: Iterable[tuple[str, Any]], tok: Any, window: int, truncation: str = "truncate"
) -> tuple[list[Encoded], dict[str, Any]]:
    """`encode_conversations` over (where, parsed record) pairs."""
    if truncation not in TRUNCATION:
        raise ValueError(f"data.truncation must be one of {TRUNCATION}, got {truncation!r}")
    out: list[Encoded] = []
    report: dict[str, Any] = {"conversations": 0, "kept": 0, "truncated": 0, "truncation": truncation,
                              "dropped": {"invalid_json": 0, "bad_messages": 0, "no_assistant_tokens": 0,
                                          "too_long": 0},
                              "examples": []}

    def drop(reason: str, where: str, detail: str) -> None:
        report["dropped"][reason] += 1
        if len(report["examples"]) < 5:
            report["examples"].append(f"{where}: {reason}: {detail:.120}")

    for where, obj in records:
        report["conversations"] += 1
        if isinstance(obj, json.JSONDecodeError):
            drop("invalid_json", where, str(obj))
            continue
        messages = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(messages, list) or not messages:
            drop("bad_messages", where, "no non-empty `messages` list")
            continue
        try:
            r = tok.render(messages, tools=obj.get("tools") or None)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            drop("bad_messages", where, str(err))
            continue
        ids, mask = np.asarray(r.ids, dtype=np.int32), np.asarray(r.mask, dtype=np.uint8)
        if not mask.any():
            drop("no_assistant_tokens", where, "nothing to train on (no assistant message)")
            continue
        if len(ids) > window:
            if truncation == "drop" or not mask[:window].any():
                drop("too_long", where, f"{len(ids)} tokens > window {window}")
                continue
            ids, mask = ids[:window], mask[:window]
            report["truncated"] += 1
        out.append(Encoded(ids, mask))
    report["kept"] = len(out)
    return out, report


def pack_best_fit(sizes: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of total size <= capacity, best-fit decreasing: O(n log n), near-full bins.

    Each item goes, largest first, into the open bin whose free room fits it most tightly. An item larger
    than the capacity is an error (callers truncate or drop first). Bins come out in creation order.
    """
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (room left, bin index)
    for i in order:
        s = sizes[i]
        if s > capacity:
            raise ValueError(f"item {i} has {s} tokens > capacity {capacity}")
        k = bisect.bisect_left(free, (s, -1))
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - s > 0:
            bisect.insort(free, (room - s, b))
    return bins


def plan_rows(lengths: list[int], window: int, epochs: int, seed: int) -> list[list[int]]:
    """Rows of whole conversations for every epoch: packed by best fit, row order shuffled per epoch."""
    rows: list[list[int]] = []
    for epoch in range(epochs):
        packed = pack_best_fit(lengths, window)
        perm = np.random.default_rng([seed, epoch]).permutation(len(packed))
        rows += [packed[i] for i in perm]
    return rows


def collate_rows(convs: list[Encoded], rows: list[list[int]], window: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows -> ids, doc ids (the tail padding is a document of its own) and masked next-token labels."""
    ids = np.full((len(rows), window), pad_id, dtype=np.int64)
    doc = np.zeros((len(rows), window), dtype=np.int64)
    train = np.zeros((len(rows), window), dtype=bool)
    for r, members in enumerate(rows):
        at = 0
        for d, c in enumerate(members):
            n = len(convs[c].ids)
            ids[r, at : at + n], doc[r, at : at + n], train[r, at : at + n] = convs[c].ids, d, convs[c].mask
            at += n
        doc[r, at:] = len(members)
    ids_t, doc_t = torch.from_numpy(ids), torch.from_numpy(doc)
    starts = torch.ones_like(doc_t, dtype=torch.bool)
    starts[:, 1:] = doc_t[:, 1:] != doc_t[:, :-1]
    labels = shift_labels(ids_t, ignore_mask=starts | ~torch.from_numpy(train))
    return {"ids": ids_t, "doc_ids": doc_t, "labels": labels}


def long_context_conversations(lc: LongContextData, tok: Any, window: int) -> tuple[list[Encoded], dict[str, Any]]:
    """The `[data.long_context]` conversations, encoded; the samples' length report with what was kept."""
    from ilm.data import longctx

    context = lc.window or window - lc.reserve
    if context < 1 or context + lc.reserve > window:
        raise ValueError(f"data.long_context.window {context} + reserve {lc.reserve} must fit in train.window {window}")
    _, convs, report = longctx.build(lc.repos, lc.documents, context, lambda s: len(tok.encode(s)), lc.seed,
                                     lc.min_document_chars)
    picked = range(len(convs))
    if 0 < lc.max_conversations < len(convs):
        import random

        picked = sorted(random.Random(lc.seed).sample(range(len(convs)), lc.max_conversations))
        report["sampled"] = lc.max_conversations
    records = ((f"long_context:{i}", convs[i]) for i in picked)
    encoded, enc = encode_records(records, tok, window, "drop")  # an answer is never truncated away
    report["kept"], report["dropped"] = enc["kept"], enc["dropped"]
    return encoded, report


# ----------------------------------------------------------------------------- setup shared with the RM stage


def check_init(init: str | Path) -> None:
    """Refuse a training checkpoint (RUN/step-N, for --resume) as `init`, saying what to pass instead."""
    path = Path(init)
    if (path / "config.json").exists() or not (path / "meta.json").exists() or not path.name.startswith("step-"):
        return
    run = path.parent
    recipe = run / "config.toml"
    finish = f"`ilm pretrain {recipe} --resume auto`" if recipe.exists() else "resuming the run with --resume auto"
    raise ValueError(f"init {path} is a training checkpoint (for --resume), not an HF export: pass {run / 'final'}, "
                     f"which the run writes when its schedule ends ({finish} finishes it; for a short run that "
                     "exports, shorten the schedule, e.g. --train.total_tokens=STEPS*batch_tokens, not max_steps)")


def base_model(init: str | None, model: ModelSection):
    """The starting InternLM2 on the meta device (shapes only), from an HF checkpoint's config (the usual
    case) or a preset (tests, ablations); `ilm.train.run.materialise` gives it its weights after sharding."""
    if init:
        from ilm.model.hf import read_config

        check_init(init)
        config = read_config(init)[0]
    else:
        config = get_preset(model.preset, **model.overrides)
    return build_model(config, device="meta")


def load_base_model(init: str | None, model: ModelSection, device: torch.device, seed: int):
    """`base_model` with its weights, whole, on one process (outside the trainers)."""
    from ilm.train.distributed import World
    from ilm.train.run import materialise

    return materialise(base_model(init, model), World(0, 1, 0, torch.device(device)), seed, init)


# ----------------------------------------------------------------------------- the loop


@torch.no_grad()
def evaluate(model, convs: list[Encoded], window: int, pad_id: int, world: World, autocast, rows_per_forward: int = 4) -> float:
    """Token-weighted mean loss on assistant tokens of the held-out conversations."""
    model.eval()
    rows = pack_best_fit([len(c.ids) for c in convs], window)
    total, count = 0.0, 0
    for first in range(0, len(rows), rows_per_forward):
        b = collate_rows(convs, rows[first : first + rows_per_forward], window, pad_id)
        n = int((b["labels"] != -100).sum())
        doc = b["doc_ids"].to(world.device)
        with autocast():
            loss = model(b["ids"].to(world.device), positions_from_doc_ids(doc), packed_batch(doc),
                         labels=b["labels"].to(world.device))
        total, count = total + float(loss) * n, count + n
    model.train()
    return total / max(count, 1)


def train(cfg: SFTConfig, resume: str = "auto") -> dict[str, Any]:
    """Run (or resume) SFT; returns a summary (steps, losses, data report, export and plot paths)."""
    with determinism(cfg.train.deterministic, cfg.train.device):
        return _train(cfg, resume)


def _train(cfg: SFTConfig, resume: str) -> dict[str, Any]:
    from ilm.tokenizer import load_tokenizer

    world = init_world(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    t = cfg.train
    if t.batch_rows % (t.micro_batch_rows * world.size):
        raise ValueError(f"train.batch_rows {t.batch_rows} is not a multiple of micro_batch_rows x processes "
                         f"= {t.micro_batch_rows * world.size}")
    lc = cfg.data.long_context
    if not cfg.data.train and not (lc.repos or lc.documents):
        raise ValueError("the recipe has no data.train files (nor data.long_context inputs)")
    tok = load_tokenizer(cfg.tokenizer)
    convs, report = encode_conversations(cfg.data.train, tok, t.window, cfg.data.truncation)
    if lc.repos or lc.documents:
        long_convs, report["long_context"] = long_context_conversations(lc, tok, t.window)
        convs += long_convs
    if not convs:
        raise ValueError(f"no usable conversations in {cfg.data.train}: {report['dropped']}")
    eval_convs = encode_conversations(cfg.data.eval, tok, t.window, cfg.data.truncation)[0] if cfg.data.eval else []
    lengths = [len(c.ids) for c in convs]
    rows = plan_rows(lengths, t.window, t.epochs, t.seed)
    total_steps = -(-len(rows) // t.batch_rows)
    report["rows"], report["repeated_rows"] = len(rows), total_steps * t.batch_rows - len(rows)
    rows += rows[: report["repeated_rows"]]  # fill the last step with the first rows again (counted)
    report["padding_fraction"] = 1.0 - sum(lengths) * t.epochs / (len(rows) * t.window)

    model = base_model(cfg.init, cfg.model)  # on the meta device: weights come per shard
    check_vocab(tok, model.config.vocab_size)
    # no cap at max_position_embeddings x factor: a longer window extrapolates RoPE (dynamic NTK's base holds at
    # any length); what limits it is memory (ilm.model.memory)
    check_training(model.config, t.micro_batch_rows, t.window, world.device, t.precision,
                   world.size if t.fsdp else 1, f"SFT with train.window {t.window:,} x {t.micro_batch_rows} row(s)",
                   checkpointing=t.activation_checkpointing)
    shape = model_shape(model.config)
    prepare(model, t, world)
    materialise(model, world, t.seed, cfg.init)
    optimizer = build_optimizer(model, cfg.optim)
    autocast = autocast_for(world, t.precision)

    run_dir = Path(cfg.run_dir)
    data_id = {"rows": len(rows), "fingerprint": fingerprint(lengths), "window": t.window, "seed": t.seed}
    step, _, metrics = start(run_dir, resume, model, optimizer, shape, world, data_id)

    stop_at = min(total_steps, t.max_steps) if t.max_steps else total_steps
    if step and step >= stop_at:  # nothing to train: keep the export and summary the run already wrote
        metrics.close()
        return nothing_to_do(run_dir, step, total_steps, t.max_steps, world)
    bar = progress(world, t.progress, stop_at, step)
    pad_id, last_eval = tok.pad_id, None

    def token_mean(b: dict[str, torch.Tensor]) -> torch.Tensor:
        doc = b["doc_ids"].to(world.device)
        with autocast():
            return model(b["ids"].to(world.device), positions_from_doc_ids(doc), packed_batch(doc),
                         labels=b["labels"].to(world.device))

    while step < stop_at:
        t0 = time.perf_counter()
        lr = lr_at(step, total_steps, cfg.optim)
        set_lr(optimizer, lr)
        mine = rows[step * t.batch_rows : (step + 1) * t.batch_rows][world.rank :: world.size]
        micro = [collate_rows(convs, mine[i : i + t.micro_batch_rows], t.window, pad_id)
                 for i in range(0, len(mine), t.micro_batch_rows)]
        counts = [int((b["labels"] != IGNORE_INDEX).sum()) for b in micro]
        loss_value, trained = accumulate(model, micro, counts, token_mean, world,  # token-weighted, all processes
                                         t.reduce_every_micro_batch)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        dt = time.perf_counter() - t0
        row = {"loss": loss_value, "lr": lr, "grad_norm": float(grad_norm), "trained_tokens": trained,
               "tokens_per_s": t.batch_rows * t.window / dt}
        if eval_convs and (step % t.eval_every == 0 or step == stop_at):
            row["eval_loss"] = last_eval = evaluate(model, eval_convs, t.window, pad_id, world, autocast)
        if step % t.log_every == 0 or "eval_loss" in row:
            metrics.log(step, **row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"loss": f"{loss_value:.3f}", "tok/s": f"{row['tokens_per_s']:,.0f}"})
        if stop_requested(world) or step % t.checkpoint_every == 0 or step == stop_at:
            checkpoint.save(run_dir, step, model, optimizer, keep_last=t.keep_last,
                            extra={"model_config": shape, "data": data_id})
        raise_if_stopped(step)
    if bar is not None:
        bar.close()
    summary: dict[str, Any] = {
        "steps": step, "total_steps": total_steps, "final_loss": metrics.rows[-1]["loss"] if metrics.rows else None,
        "eval_loss": last_eval, "data": report, "run_dir": str(run_dir),
    }
    if step == total_steps:
        summary["export"] = str(export(model, run_dir / "final", cfg.tokenizer, world))
    if world.is_main:
        summary["plot"] = str(metrics.plot(stage="SFT"))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    metrics.close()
    return summary


# ----------------------------------------------------------------------------- demo data (real material)

def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


RECIPES = Path(__file__).resolve().parents[3] / "recipes"


def demo(out: str | Path, init: str | Path, tokenizer: str | Path, quick: bool = False, n: int = 1200,
         long_repos: list[str] | None = None, long_documents: list[str] | None = None) -> dict[str, Any]:
    """The demo's SFT stage: stdlib conversations -> recipes/sft-tiny.toml from `init` -> HF checkpoint.

    `long_repos` / `long_documents` (code pipeline and data pipeline outputs) add long-context conversations
    (`[data.long_context]`): at the demo's 256-token window a "long" context is 192 tokens, the recipe's
    32k scaled down as the pretraining windows are.

    Writes `out/sft-data/{train,eval}.jsonl`, trains into `out/sft`, prints one line and returns the summary
    (its "export" is the fine-tuned checkpoint for the reward model).
    """
    from ilm.config import load

    out = Path(out)
    convs = demo_conversations(n=80 if quick else n, seed=0)
    cut = len(convs) * 9 // 10
    train_file = write_jsonl(out / "sft-data" / "train.jsonl", convs[:cut])
    eval_file = write_jsonl(out / "sft-data" / "eval.jsonl", convs[cut:])
    overrides = [f"--run_dir={json.dumps(str(out / 'sft'))}", f"--tokenizer={json.dumps(str(tokenizer))}",
                 f"--init={json.dumps(str(init))}", f"--data.train=[{json.dumps(str(train_file))}]",
                 f"--data.eval=[{json.dumps(str(eval_file))}]", "--train.progress=false"]
    if long_repos or long_documents:
        overrides += [f"--data.long_context.repos={json.dumps([str(p) for p in long_repos or []])}",
                      f"--data.long_context.documents={json.dumps([str(p) for p in long_documents or []])}",
                      "--data.long_context.window=192", "--data.long_context.reserve=64",
                      f"--data.long_context.max_conversations={40 if quick else 240}"]
    cfg = load(SFTConfig, RECIPES / "sft-tiny.toml", overrides)
    from ilm.train.run import save_recipe

    save_recipe(cfg)  # RUN_DIR/config.toml, as `ilm sft` writes it
    summary = train(cfg, resume="never")
    d = summary["data"]
    print(f"[sft] {d['kept']} conversations ({d['truncated']} truncated to {cfg.train.window} tokens, "
          f"dropped {sum(d['dropped'].values())}) in {d['rows']} packed rows; {summary['steps']} steps; "
          f"held-out assistant-token loss {summary['eval_loss']:.3f}; HF checkpoint: {summary.get('export')}")
    lc = d.get("long_context")
    if lc:
        print(f"[sft] long-context samples: {lc.get('kept')} conversations of up to {cfg.data.long_context.window} "
              f"context tokens (files in dependency order; {lc.get('split_files', 0)} files and {lc.get('split_documents', 0)} documents "
              f"longer than that split)")
    return summary
