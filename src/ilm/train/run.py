"""The small pieces every training stage (pretrain, sft, reward) shares around its own explicit loop:
the determinism switch, model preparation from outside, resume, the progress bar, resume bookkeeping of
the metrics file, and the checks a run makes before it starts. Functions, not a Trainer class: each stage
keeps its loop readable top to bottom."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ilm.train import checkpoint
from ilm.train.distributed import World, apply_activation_checkpointing, apply_compile, apply_ddp, apply_fsdp
from ilm.train.metrics import Metrics

CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for deterministic results (PyTorch's reproducibility notes)


def cuda_determinism_env(device_type: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """cuBLAS is deterministic only with a fixed workspace, read from `CUBLAS_WORKSPACE_CONFIG` when its first
    handle is made (the first matmul): set it before then, unless the user chose one."""
    if device_type == "cuda":
        environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


@contextmanager
def determinism(enabled: bool, device: str = "auto") -> Iterator[None]:
    """`torch.use_deterministic_algorithms` for the run only: it is process-wide, so restore the caller's.

    Off means untouched: the switch imports torch's inductor (seconds at every start), so it is only
    called when the run asks for determinism. On CUDA the cuBLAS workspace is fixed too (it stays set:
    cuBLAS has read it by the time the run ends)."""
    if not enabled:
        yield
        return
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda_determinism_env(torch.device(device).type)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def model_shape(config) -> dict[str, Any]:
    """The config fields a checkpoint must agree on to resume (RoPE settings may change between stages)."""
    skip = ("rope_theta", "max_position_embeddings", "rope_scaling", "stop_token_ids")
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}


def prepare(model: torch.nn.Module, train: Any, world: World, backbone: torch.nn.Module | None = None) -> torch.nn.Module:
    """Activation checkpointing, compilation, and FSDP2 (or DDP when `train.fsdp` is off), per the stage's
    `train` settings. Works on a model still on the meta device (the usual case: weights come after, one
    shard at a time, with `materialise`).

    `backbone` is the InternLM2 inside a wrapper (the reward model): the layers are prepared there and the
    wrapper becomes the FSDP / DDP root.
    """
    core = backbone if backbone is not None else model
    if train.activation_checkpointing:
        apply_activation_checkpointing(core)
    if train.compile:
        apply_compile(core)
    if world.size > 1 and train.fsdp:
        bf16 = train.precision == "bf16" and world.device.type == "cuda"
        apply_fsdp(core, torch.bfloat16 if bf16 else None)
        if backbone is not None:
            from torch.distributed.fsdp import fully_shard

            fully_shard(model)
    elif world.size > 1:
        apply_ddp(model, world.device)
    return model


def materialise(
    model: torch.nn.Module, world: World, seed: int, init: str | None = None, backbone: torch.nn.Module | None = None
) -> torch.nn.Module:
    """Give a (prepared) meta-device model its weights: allocate this process's shards on the device, then
    initialise them from `seed` or read them from the HF checkpoint `init`, one tensor at a time. No process
    holds a whole parameter on the way (under FSDP), and the values do not depend on the number of
    processes. `backbone`: as in `prepare`; the wrapper's own head is initialised from `seed`."""
    core = backbone if backbone is not None else model
    model.to_empty(device=world.device)
    with torch.no_grad():
        if init:
            from ilm.model.hf import load_weights

            load_weights(core, init)
        else:
            core.init_weights(seed)
        if backbone is not None:
            model.init_head()
    return model


def autocast_for(world: World, precision: str) -> Callable[[], Any]:
    enabled = precision == "bf16"
    return lambda: torch.autocast(world.device.type, dtype=torch.bfloat16, enabled=enabled)


def resume_from(run_dir: Path, resume: str) -> Path | None:
    """`auto`: the latest checkpoint in run_dir (if any); `never`: none; anything else: that checkpoint."""
    if resume == "auto":
        return checkpoint.latest(run_dir)
    return Path(resume) if resume not in ("never", "") else None


def start(
    run_dir: Path, resume: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, shape: dict[str, Any],
    world: World, data_id: dict | None = None,
) -> tuple[int, dict[str, Any], Metrics]:
    """Resume if asked and possible: (step, the checkpoint's other state, metrics continuing from there)."""
    metrics = Metrics(run_dir, enabled=world.is_main)
    found = resume_from(run_dir, resume)
    if found is None:
        if world.is_main and (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()
        return 0, {}, metrics
    rest = checkpoint.load(found, model, optimizer, shape)
    if data_id is not None and rest.get("data") != data_id:
        raise checkpoint.ResumeError(f"{found}: planned on other data ({rest.get('data')} vs {data_id}); "
                                     "resume with the same data and settings or use a new run_dir")
    step = rest["step"]
    metrics.rows = [r for r in read_metrics(run_dir) if r["step"] <= step]
    if world.is_main:  # steps logged after the checkpoint are redone: drop them from the file
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics.rows))
        print(f"resumed from {found} at step {step}")
    return step, rest, metrics


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress(world: World, enabled: bool, total: int, initial: int):
    """The training bar (main process only): tqdm on a terminal, periodic plain lines in a log."""
    if not (world.is_main and enabled):
        return None
    from ilm.progress import progress_bar

    return progress_bar(total=total, initial=initial, unit="step", desc="train")


def check_vocab(tok: Any, vocab_size: int) -> None:
    if tok.vocab_size > vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary is {vocab_size}; "
                         "use the tokenizer the model was pretrained with")


def fingerprint(lengths: Iterable[int]) -> str:
    """Identifies the data a run was planned on, so a resume with different data is refused."""
    return hashlib.sha256(np.asarray(list(lengths), dtype=np.int64).tobytes()).hexdigest()[:16]


RESOLVED_RECIPE = "config.toml"


def save_recipe(cfg: Any) -> Path | None:
    """`run_dir/config.toml`: the recipe this run was started with, overrides applied and paths absolute
    (`ilm.config.load` reads it back), beside metrics.jsonl. Written by the main process, atomically; each
    start (a resume too) writes the recipe it ran with."""
    from ilm.config import to_toml

    run_dir = getattr(cfg, "run_dir", None)
    if not run_dir or os.environ.get("RANK", "0") != "0":
        return None
    path = Path(run_dir) / RESOLVED_RECIPE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(to_toml(cfg))
    os.replace(tmp, path)
    return path


class Interrupted(Exception):
    """SIGINT / SIGTERM arrived during training: the step in progress finished and a checkpoint was saved."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


_STOP: dict[str, Any] = {"signal": 0, "at": 0.0, "agreed": False}


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While training: SIGINT / SIGTERM ask the loop to stop after the step in progress (`stop_requested`),
    save a checkpoint and raise `Interrupted`; a second Ctrl-C more than 2 s later stops at once (the grace
    period because torchrun forwards the terminal's signal to workers that have already received it)."""
    def handler(signum: int, frame: Any) -> None:
        if _STOP["signal"] and time.monotonic() - _STOP["at"] > 2.0:
            raise KeyboardInterrupt
        if not _STOP["signal"]:
            _STOP["signal"], _STOP["at"] = signum, time.monotonic()
            if os.environ.get("RANK", "0") == "0":
                print(f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                      "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _STOP.update(signal=0, at=0.0, agreed=False)


def stop_requested(world: World) -> bool:
    """Whether the loop stops after this step (a signal arrived, on any process). Every process calls it at
    every step boundary: under torchrun it is one all-reduce of one number, so all agree on the same step."""
    flag = _STOP["signal"]
    if world.size > 1:
        import torch.distributed as dist

        t = torch.tensor([flag], dtype=torch.int64, device=world.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flag = int(t.item())
        if flag and not _STOP["signal"]:
            _STOP["signal"] = flag
    _STOP["agreed"] = bool(flag)
    return bool(flag)


def raise_if_stopped(step: int) -> None:
    """After the step's checkpoint: leave the loop with `Interrupted` if `stop_requested` said so."""
    if _STOP["agreed"]:
        raise Interrupted(_STOP["signal"], step)


def nothing_to_do(run_dir: Path, step: int, total_steps: int, max_steps: int | None, world: World) -> dict[str, Any]:
    """A resumed run already at (or past) the step it would stop at: no step, no new export, no new
    summary.json (a re-export would only rewrite the same weights; the held-out figures are not measured
    again). Returns the summary the run wrote when it got there. One line says so; where max_steps stopped
    it short, `stop_note` (the command line's) is that line."""
    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(steps=step, total_steps=total_steps, run_dir=str(run_dir))
    if world.is_main and (not max_steps or max_steps >= total_steps):
        print(f"the run in {run_dir} had already finished at step {step} of {total_steps} (export: "
              f"{Path(run_dir) / 'final'}); nothing to do", file=sys.stderr)
    return summary


def stop_note(summary: dict[str, Any], max_steps: int | None, short: str = "") -> str | None:
    """One line saying what `--train.max_steps` did, when it stopped a run short or was ignored; `short` is the
    override that would make the schedule itself end at max_steps (and so export)."""
    step, total = summary.get("steps"), summary.get("total_steps")
    if not max_steps or step is None or total is None or max_steps >= total:
        return None
    if step == total:
        return f"the run had already finished at step {total}; nothing to do (max_steps {max_steps} ignored)"
    if step > max_steps:
        return (f"the run is already at step {step} of {total}, past max_steps {max_steps}; nothing to do "
                "(resume with --resume auto and no max_steps to finish and export)")
    return (f"stopped at step {step} of {total} (max_steps {max_steps}): not exported; "
            "resume with --resume auto and no max_steps to finish and export" +
            (f", or for a {max_steps}-step run that exports, shorten the schedule instead: {short}" if short else ""))


class _RecipeKeeper:
    """The run's config.toml and metrics.jsonl size before a start: a start that fails before it trains a step
    puts the old config.toml back (or removes the new one), so a refusal leaves the run as it was."""

    def __init__(self, run_dir: Any):
        self.path = Path(run_dir) / RESOLVED_RECIPE if run_dir else None
        self.old = self.path.read_bytes() if self.path is not None and self.path.is_file() else None
        self.rows = self._rows()

    def _rows(self) -> int:
        m = self.path.with_name("metrics.jsonl") if self.path is not None else None
        return m.stat().st_size if m is not None and m.is_file() else 0

    def restore(self) -> None:
        if self.path is None or os.environ.get("RANK", "0") != "0" or self._rows() != self.rows:
            return
        if self.old is not None:
            self.path.write_bytes(self.old)
        else:
            self.path.unlink(missing_ok=True)


def run_recipe_cli(prog: str, config_cls: type, train: Callable[..., dict], recipe: str, rest: list[str]) -> int:
    """`ilm <stage> RECIPE.toml [--resume ...] [--a.b=c ...]` for every training stage: parse, train, print
    the summary, and leave the process group before the interpreter exits (under torchrun).

    A mistake raises to `ilm.cli.main` (one line, exit 2); SIGINT / SIGTERM save a checkpoint after the step
    in progress and exit 130 / 143 with the command that resumes."""
    import argparse
    import shlex

    from ilm.config import load
    from ilm.train.distributed import shutdown_world

    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--resume", default="auto", help="auto (latest checkpoint in run_dir), never, or a checkpoint dir")
    p.add_argument("--base-dir", default=None, help="read the recipe's relative paths against DIR (default: $ILM_BASE_DIR, "
                   "else the folder holding recipes/ for a recipe under recipes/, else the recipe's folder)")
    opts, overrides = p.parse_known_args(rest)
    bad = [o for o in overrides if not (o.startswith("--") and "=" in o)]
    if bad:
        p.error(f"unrecognised arguments {bad}; overrides look like --train.max_steps=10")
    ok = False
    cfg = load(config_cls, recipe, overrides, base_dir=opts.base_dir)
    kept = _RecipeKeeper(getattr(cfg, "run_dir", None))
    try:
        save_recipe(cfg)
        with stop_on_signals():
            summary = train(cfg, resume=opts.resume)
        ok = True
    except Interrupted as stop:
        ok = True  # every process stopped at the same step
        if os.environ.get("RANK", "0") == "0":
            nproc = int(os.environ.get("WORLD_SIZE", "1"))
            launch = f"torchrun --nproc_per_node {nproc} -m ilm.cli" if nproc > 1 else "ilm"
            stage = prog.split()[1:-1]  # "ilm rm train RECIPE.toml" -> rm train
            base = ["--base-dir", opts.base_dir] if opts.base_dir else []
            cmd = shlex.join([*launch.split(), *stage, recipe, "--resume", "auto", *base, *overrides])
            print(f"{stop}; checkpoint saved in {getattr(cfg, 'run_dir', '?')}; resume with: {cmd}",
                  file=sys.stderr, flush=True)
        return 128 + stop.signum
    except Exception:
        kept.restore()  # refused before a step (other data, a missing file): the run's config.toml stays its own
        raise
    finally:
        shutdown_world(barrier=ok)  # no barrier after a failure: the other ranks may never arrive
    print(json.dumps(summary, indent=2, default=str))
    train_cfg = getattr(cfg, "train", None)
    max_steps = getattr(train_cfg, "max_steps", None)
    short = (f"--train.total_tokens={max_steps * train_cfg.batch_tokens}" if max_steps and
             isinstance(getattr(train_cfg, "total_tokens", None), int) and hasattr(train_cfg, "batch_tokens") else "")
    note = stop_note(summary, max_steps, short)
    if note and os.environ.get("RANK", "0") == "0":
        print(note, file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- one optimizer step over micro-batches


def global_count(n: int, world: World) -> int:
    """`n` summed over every process: the denominator of a step's token- or pair-weighted mean loss.

    One all-reduce of one integer, made before the step's forwards (every process must call it)."""
    if world.size == 1:
        return int(n)
    import torch.distributed as dist

    total = torch.tensor([int(n)], dtype=torch.int64, device=world.device)
    dist.all_reduce(total)
    return int(total.item())


@contextmanager
def sync_gradients(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Whether the backward passes in this block reduce gradients across processes.

    Gradient accumulation reduces once per optimizer step, in the last micro-batch's backward, instead of
    once per micro-batch: FSDP2 (`set_requires_gradient_sync`, one reduce-scatter per FSDP unit per step;
    the unsharded gradients of the earlier micro-batches wait in memory, fp32 under the bf16 policy), DDP
    (`no_sync`, which decides in the forward: run the forward inside the block too), replicated submodules
    of a plain container (PPO's actor and critic under DDP) each the same way, a plain module: nothing to do.
    Parameters stay resharded after each forward and backward (FSDP2's default
    `reshard_after_forward=True`): each micro-batch all-gathers them again, which keeps the memory of one
    unsharded layer at a time, the point of sharding a 7B/20B model.
    """
    from torch.distributed._composable.replicate import DDP as ReplicatedModule
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    replicated = [m for m in model.modules() if isinstance(m, ReplicatedModule)]
    if sharded:
        for m in sharded:
            m.set_requires_gradient_sync(enabled, recurse=False)
        try:
            yield
        finally:
            for m in sharded:
                m.set_requires_gradient_sync(True, recurse=False)
    elif replicated:  # `replicate` (DDP applied in place, `apply_ddp`): the model or its submodules
        for m in replicated:
            m.set_requires_gradient_sync(enabled)
        try:
            yield
        finally:
            for m in replicated:
                m.set_requires_gradient_sync(True)
    elif isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
    else:
        yield


def accumulate(
    model: torch.nn.Module, micro_batches: list[Any], counts: list[int],
    mean_loss: Callable[[Any], torch.Tensor], world: World, reduce_every_micro_batch: bool = False,
    reduce: bool = True,
) -> tuple[float, int]:
    """Forwards and backwards of this process's micro-batches for one optimizer step: (loss, global count).

    The rule every stage follows (pretraining, SFT, the reward model, PPO): a step's objective is the mean
    over every counted item (trained token, preference pair, ...) of every micro-batch of every process,

        loss = (sum of all item losses) / N,    N = global_count(sum(counts), world),

    so it does not depend on how the step is split over processes and micro-batches (a micro-batch with
    100 trained tokens weighs 25 times one with 4). `mean_loss(batch)` runs the forward and returns the
    mean over that micro-batch's `count` items; its backward is scaled by count * world.size / N, the
    world size undoing the mean over processes that FSDP and DDP apply to gradients. Gradients are
    reduced in the last micro-batch's backward only (`sync_gradients`), or in every one with
    `reduce_every_micro_batch`: under FSDP the earlier micro-batches otherwise keep full-size fp32
    gradients on every process (4 bytes per parameter: 31 GB at 7B, 79 GB at 20B). The returned loss is
    the same global mean, for logging (one more all-reduce, after the backwards). `reduce=False`: no
    backward of this call reduces; the gradients wait for a later call's last backward over the same
    parameters (PPO: the actor's ptx rows, then its PPO rows, reduced together once).
    """
    total = global_count(sum(counts), world)
    scale = world.size / max(total, 1)
    local = torch.zeros((), dtype=torch.float32, device=world.device)
    for i, (batch, n) in enumerate(zip(micro_batches, counts, strict=True)):
        with sync_gradients(model, enabled=reduce and (reduce_every_micro_batch or i == len(micro_batches) - 1)):
            loss_sum = mean_loss(batch).float() * n
            (loss_sum * scale).backward()
        local += loss_sum.detach()
    if world.size > 1:
        import torch.distributed as dist

        dist.all_reduce(local)
    return float(local) / max(total, 1), total
