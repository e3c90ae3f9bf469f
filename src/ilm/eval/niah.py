"""`ilm eval niah`: Needle in a Haystack over context lengths x depths (docs/recipe.md, Long context).

A haystack of real prose (Python's own documentation and docstrings, `ilm.data.corpus.real_texts`: nothing
downloaded) is cut to the requested context length; a needle, by default a random fact ("The secret number
of <word> is <5 digits>."), goes in at the requested depth on a sentence boundary, and the question that
follows ends where the answer begins ("... The secret number of <word> is"). A cell is a hit when the
needle's value appears in the greedy answer (exact retrieval). `--chat` asks a chat model in its own chat
template instead: haystack and question as the user's message, the answer's start as the assistant's.

The scoring core (`run_grid`) takes any callable `prompt ids -> answer ids`, so the score itself is tested
with stand-ins; `model_answerer` wraps an ilm model. `--compare-ntk` loads the same weights twice, with
dynamic NTK (the checkpoint's factor, or `--ntk-factor`) and with plain RoPE (rope_scaling = null), and
writes one heatmap per run and a summary split at the trained length (max_position_embeddings).

Outputs in `--out`: niah.json (per cell: length, depth, hit, answer, and where the needle landed),
niah.png (the heatmaps side by side) and niah-<run>.png per run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ilm.eval.haystack import (  # noqa: F401  (value_digits, haystack_text, sentences: part of niah's API)
    DEFAULT_NEEDLE,
    Haystack,
    NiahError,
    Tokenizer,
    build_prompt,
    chat_frame,
    haystack_text,
    make_needle,
    needle_ids,
    sentences,
    value_digits,
)

DEFAULT_NTK_FACTOR = 2.0  # the recipe's dynamic NTK factor (docs/recipe.md, Long context)
Answerer = Callable[[list[int]], Sequence[int]]  # prompt ids -> generated ids


# ---------------------------------------------------------------- the scoring core

def parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise NiahError(f"--lengths must be comma-separated positive integers, got {text!r}") from None
    if not lengths or any(n <= 0 for n in lengths):
        raise NiahError(f"--lengths must be comma-separated positive integers, got {text!r}")
    return sorted(set(lengths))


def parse_depths(text: str) -> list[float]:
    try:
        depths = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise NiahError(f"--depths must be comma-separated fractions in [0, 1], got {text!r}") from None
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):  # also refuses nan
        raise NiahError(f"--depths must be comma-separated fractions in [0, 1], got {text!r}")
    return sorted(set(depths))


def run_grid(answer: Answerer, tokenizer: Tokenizer, lengths: Sequence[int], depths: Sequence[float],
             needle: str = DEFAULT_NEEDLE, seed: int = 0, trials: int = 1, haystack: Haystack | None = None,
             answer_room: int = 0, on_cell: Callable[[dict], None] | None = None, chat: bool = False) -> dict[str, Any]:
    """Every (length, depth, trial) cell: build the prompt, ask `answer`, score exact retrieval.

    Each trial draws its own needle and haystack start from `seed`, the same for every length and depth, so
    two runs with the same seed (dynamic NTK vs plain RoPE) see identical prompts. `chat` wraps each prompt
    in the tokenizer's chat template (`chat_frame`); the length counts the template's tokens too.
    """
    if trials < 1:
        raise NiahError(f"--trials must be >= 1, got {trials}")
    haystack = haystack or Haystack(tokenizer)
    rng = random.Random(seed)
    draws = [(make_needle(needle, rng), rng.randrange(len(haystack.texts))) for _ in range(trials)]
    frame = chat_frame(tokenizer) if chat else None
    head = frame[0] if frame else None
    # refuse a needle too long for the shortest context before running anything
    for n, _ in draws:
        build_prompt(haystack, *needle_ids(tokenizer, n, frame), min(lengths), 0.0, 0, answer_room, head)
    cells = []
    for length in lengths:
        for depth in depths:
            for t, (n, offset) in enumerate(draws):
                p = build_prompt(haystack, *needle_ids(tokenizer, n, frame), length, depth, offset, answer_room, head)
                text = tokenizer.decode(list(answer(p.ids)), skip_special=True)
                cell = {"length": length, "depth": depth, "trial": t, "hit": n.value in text, "answer": text,
                        "value": n.value, "prompt_tokens": len(p.ids), "needle_token": p.needle_at,
                        "needle_depth": round(p.depth, 4)}
                cells.append(cell)
                if on_cell is not None:
                    on_cell(cell)
    return {"lengths": list(lengths), "depths": list(depths), "trials": trials, "seed": seed, "needle": needle,
            "chat": chat, "cells": cells, "score": score_table(cells, lengths, depths)}


def score_table(cells: list[dict], lengths: Sequence[int], depths: Sequence[float]) -> dict[str, Any]:
    """Hit rate per (depth, length), per length, and overall."""
    def rate(sel: list[dict]) -> float:
        return sum(c["hit"] for c in sel) / len(sel) if sel else 0.0

    grid = [[rate([c for c in cells if c["length"] == n and c["depth"] == d]) for n in lengths] for d in depths]
    return {"grid": grid, "by_length": {str(n): rate([c for c in cells if c["length"] == n]) for n in lengths},
            "overall": rate(cells)}


def summarise(runs: dict[str, dict], trained_length: int | None) -> dict[str, Any]:
    """Per run: overall hit rate, and within / past the trained length when it is known."""
    out: dict[str, Any] = {"trained_length": trained_length}
    for name, run in runs.items():
        cells = run["cells"]
        row: dict[str, Any] = {"overall": run["score"]["overall"], "by_length": run["score"]["by_length"]}
        if trained_length is not None:
            for part, sel in (("within", [c for c in cells if c["length"] <= trained_length]),
                              ("beyond", [c for c in cells if c["length"] > trained_length])):
                row[part] = sum(c["hit"] for c in sel) / len(sel) if sel else None
        out[name] = row
    return out


# ---------------------------------------------------------------- models

def greedy_full(model, prompt: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = ()) -> list[int]:
    """Greedy decoding by a full forward per token (no cache, no length check): the fallback for prompts the
    generator refuses. Under dynamic NTK every step then uses the base of its own length, as the generator
    does past max_position_embeddings."""
    import torch

    seq = list(prompt)
    device = model.output.weight.device
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([seq], device=device), last_only=True)[0, -1].argmax())
            seq.append(token)
            if token in stop_ids:
                break
    return seq[len(prompt):]


def model_answerer(model, max_new_tokens: int, stop_ids: Sequence[int]) -> Answerer:
    """Greedy answers from an ilm model: the KV-cache generator where it takes the prompt whole, else
    `greedy_full`. The generator refuses (or clips the answer of) prompts near `config.max_context` while it
    has a hard cap; once it has none, every prompt goes through it and the fallback is never used."""
    from ilm.model.generate import Sampling, generate
    from ilm.model.memory import ContextMemoryError

    sampling = Sampling(max_new_tokens=max_new_tokens, greedy=True, stop_ids=tuple(stop_ids))
    stops = set(stop_ids)

    def answer(prompt: list[int]) -> list[int]:
        try:
            out = generate(model, [prompt], sampling, keep_stop=True)[0]
        except ContextMemoryError:
            raise  # the memory estimate's refusal stands: a full forward would need at least as much
        except ValueError:
            if len(prompt) < getattr(model.config, "max_context", float("inf")):
                raise  # not the length cap: a real error
            return greedy_full(model, prompt, max_new_tokens, stop_ids)
        if len(out) < max_new_tokens and not (out and out[-1] in stops):  # clipped at the cap
            return greedy_full(model, prompt, max_new_tokens, stop_ids)
        return out

    return answer


def load_model(path: str | Path, rope_scaling: Any = "keep", positions: int = 0, device: str = "cpu"):
    """Load a checkpoint in float32, optionally with other RoPE scaling (the weights do not depend on it).

    Plain RoPE (rope_scaling = null): the angles are position x inv_freq, and inv_freq depends on the base and
    head size only, so max_position_embeddings changes no number; it only sets the generator's length
    check. It is raised to `positions` so the KV-cache generator evaluates plain RoPE past the trained
    length with the very logits the original config gives. Dynamic NTK is left alone: its base depends on
    max_position_embeddings.
    """
    import torch

    from ilm.model.hf import load_weights, read_config
    from ilm.model.internlm2 import InternLM2

    config, _ = read_config(path)
    if rope_scaling != "keep":
        config = config.replace(rope_scaling=rope_scaling)
    if config.rope_scaling is None and positions > config.max_position_embeddings:
        config = config.replace(max_position_embeddings=positions)
    with torch.device("meta"):
        model = InternLM2(config)
    model = model.to(torch.float32).to_empty(device=device)
    return load_weights(model, path).eval()


def trained_length(path: str | Path) -> int:
    from ilm.model.hf import read_config

    return read_config(path)[0].max_position_embeddings


def ntk_runs(path: str | Path, compare: bool, factor: float | None) -> dict[str, Any]:
    """Run name -> rope_scaling to load with: the checkpoint's own, or dynamic NTK vs plain RoPE."""
    from ilm.model.hf import read_config

    config = read_config(path)[0]
    if not compare:
        return {"checkpoint": "keep"}
    if factor is None:
        factor = config.rope_scaling_factor if config.rope_scaling_type == "dynamic" else DEFAULT_NTK_FACTOR
    return {"dynamic": {"type": "dynamic", "factor": float(factor)}, "plain": None}


def evaluate(checkpoint: str | Path, lengths: Sequence[int], depths: Sequence[float], out: str | Path | None = None,
             compare_ntk: bool = False, needle: str = DEFAULT_NEEDLE, max_new_tokens: int = 12, seed: int = 0,
             trials: int = 1, ntk_factor: float | None = None, device: str = "cpu", verbose: bool = False,
             answer_room: int = 0, chat: bool = False) -> dict:
    """NIAH on a checkpoint directory (weights + tokenizer): JSON and heatmaps in `out` when given.

    `answer_room` > 0 makes each prompt that many tokens shorter than its length, so prompt + answer fit the
    length (the passkey experiment: a model trained on sequences of at most W tokens is asked at W).
    `chat` asks in the chat template (a chat model), see `run_grid`."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").exists():
        raise NiahError(f"{checkpoint}: no config.json; is it an HF checkpoint directory?")
    if not (checkpoint / "tokenizer.json").exists() and not (checkpoint / "tokenizer.model").exists():
        raise NiahError(f"{checkpoint} has no tokenizer (tokenizer.json or tokenizer.model); NIAH needs text in and out")
    if max_new_tokens < 1:
        raise NiahError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    from ilm.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(checkpoint)
    haystack = Haystack(tokenizer)
    runs = {}
    for name, rope in ntk_runs(checkpoint, compare_ntk, ntk_factor).items():
        model = load_model(checkpoint, rope, positions=max(lengths) + max_new_tokens, device=device)
        answer = model_answerer(model, max_new_tokens, tokenizer.stop_ids)

        def show(cell: dict, name: str = name) -> None:
            if verbose:
                print(f"[niah {name}] length {cell['length']} depth {cell['depth']:.2f}: "
                      f"{'hit ' if cell['hit'] else 'miss'} {cell['answer'][:40]!r}", file=sys.stderr, flush=True)

        runs[name] = run_grid(answer, tokenizer, lengths, depths, needle, seed, trials, haystack, answer_room, show,
                              chat)
        runs[name]["rope_scaling"] = model.config.rope_scaling
    result = {"checkpoint": str(checkpoint), "runs": runs,
              "summary": summarise(runs, trained_length(checkpoint))}
    if out is not None:
        write_outputs(Path(out), result)
    return result


# ---------------------------------------------------------------- outputs

def heatmap(ax, run: dict, title: str, trained: int | None = None) -> None:
    import numpy as np

    grid = np.array(run["score"]["grid"], dtype=float)
    ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(run["lengths"])), [str(n) for n in run["lengths"]], fontsize=7)
    ax.set_yticks(range(len(run["depths"])), [f"{d:g}" for d in run["depths"]], fontsize=7)
    ax.set_xlabel("context length (tokens)", fontsize=8)
    ax.set_ylabel("needle depth", fontsize=8)
    ax.set_title(f"{title}: {run['score']['overall']:.0%}", fontsize=9)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:.0%}" if run["trials"] > 1 else ("hit" if v else "-"), ha="center", va="center",
                fontsize=6)
    if trained is not None:  # a line after the last length within the trained window
        within = sum(n <= trained for n in run["lengths"])
        if 0 < within < len(run["lengths"]):
            ax.axvline(within - 0.5, color="black", linestyle="--", linewidth=1)


def _label(name: str, rope: Any) -> str:
    if name == "plain":
        return "plain RoPE"
    if isinstance(rope, dict) and rope.get("type") == "dynamic":
        return f"dynamic NTK x{rope['factor']:g}"
    return name


def write_outputs(out: Path, result: dict) -> dict[str, Path]:
    """niah.json, niah.png (all runs side by side) and niah-<run>.png; written to a temporary name and
    renamed, so a reader never sees half a file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ilm.data.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    trained = result["summary"].get("trained_length")
    paths = {"json": out / "niah.json", "png": out / "niah.png"}
    atomic_write_text(paths["json"], json.dumps(result, indent=1) + "\n")
    runs = result["runs"]
    figures = {"png": list(runs)} | {f"png-{n}": [n] for n in runs if len(runs) > 1}
    for key, names in figures.items():
        fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 2.6), squeeze=False)
        for ax, name in zip(axes[0], names):
            heatmap(ax, runs[name], _label(name, runs[name].get("rope_scaling")), trained)
        fig.tight_layout()
        path = out / ("niah.png" if key == "png" else f"niah-{names[0]}.png")
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        tmp.replace(path)
        paths[key] = path
    return paths


# ---------------------------------------------------------------- demo and CLI

def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="HF checkpoint directory with its tokenizer")
    parser.add_argument("--lengths", default="256,512,1024", help="comma-separated context lengths in tokens")
    parser.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="comma-separated needle depths in [0, 1]")
    parser.add_argument("--out", required=True, help="output directory (niah.json, niah.png)")
    parser.add_argument("--compare-ntk", action="store_true",
                        help="run twice: dynamic NTK and plain RoPE (the same weights), two heatmaps and a summary")
    parser.add_argument("--ntk-factor", type=float, default=None,
                        help=f"dynamic NTK factor for --compare-ntk (default: the checkpoint's, else {DEFAULT_NTK_FACTOR})")
    parser.add_argument("--needle", default=DEFAULT_NEEDLE,
                        help="needle sentence; {key} = a random word, {value} = random 5 digits ({value:N}: N); a literal "
                             "needle must read '<subject> is <value>.' (default %(default)r)")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="greedy answer length (default 12)")
    parser.add_argument("--chat", action="store_true",
                        help="ask in the chat template (for chat models): haystack and question as the user's "
                             "message, the answer's start ('The secret number of X is') as the assistant's")
    parser.add_argument("--trials", type=int, default=1, help="needles per cell (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the needles and haystack starts")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    lengths, depths = parse_lengths(args.lengths), parse_depths(args.depths)
    if args.ntk_factor is not None and not args.ntk_factor >= 1.0:
        raise NiahError(f"--ntk-factor must be >= 1.0, got {args.ntk_factor}")
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    result = evaluate(args.checkpoint, lengths, depths, args.out, args.compare_ntk, args.needle, args.max_new_tokens,
                      args.seed, args.trials, args.ntk_factor, device, verbose=True, chat=args.chat)
    summary = result["summary"]
    trained = summary["trained_length"]
    print(f"NIAH {args.checkpoint} (trained length {trained}): {len(lengths)} lengths x {len(depths)} depths x "
          f"{args.trials} trial(s)")
    print(f"{'run':<11}" + "".join(f"{n:>8}" for n in lengths) + f"{'within':>8}{'beyond':>8}{'overall':>9}")
    for name in result["runs"]:
        row = summary[name]
        cols = "".join(f"{row['by_length'][str(n)]:>8.0%}" for n in lengths)
        part = "".join(f"{'-':>8}" if row[k] is None else f"{row[k]:>8.0%}" for k in ("within", "beyond"))
        print(f"{name:<11}{cols}{part}{row['overall']:>9.0%}")
    print(f"wrote {Path(args.out) / 'niah.json'} and {Path(args.out) / 'niah.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m ilm.eval.niah ...`, with the one-line errors of `ilm`."""
    from ilm.cli import user_error

    parser = argparse.ArgumentParser(prog="ilm eval niah", description=__doc__.split("\n")[0])
    register(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:
        message = user_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
