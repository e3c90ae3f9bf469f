"""Passkey extrapolation: a tiny model trained at window W on passkey retrieval, asked at W, 2W and 4W with
dynamic NTK and with plain RoPE (the same weights; docs/recipe.md, Long context: "200k Needle-in-a-Haystack
passes by extrapolation (dynamic NTK, factor 2.0), not by 200k training").

Task (the NIAH prompt of `ilm.eval.niah` with the needle "The pass key is <5 digits>. Remember it."): real
prose from Python's docs as filler, the needle on a sentence boundary at a random depth, then "What is the
pass key? The pass key is"; the loss is on the answer's digits only. Training samples have random lengths
up to W tokens, prompt and answer together; the model's max_position_embeddings is W, RoPE base 10,000
(a short window's base; the tiny preset's 1,000,000 barely rotates in a few hundred positions).

Evaluation: the trained weights saved as an HF checkpoint with the tokenizer, then `ilm.eval.niah.evaluate`
with `compare_ntk=True`: "dynamic" = rope_scaling {"type": "dynamic", "factor": 2.0}, "plain" =
rope_scaling null, at context lengths W, 2W, 4W (prompt + answer), five depths, several needles per cell.
Prompts past the generator's cap are answered by full recompute (ilm.eval.niah.model_answerer).

    python examples/passkey.py --out runs/passkey [--window 128] [--steps 1500] [--seed 0]

Writes runs/passkey/checkpoint, niah.json, niah.png (both heatmaps), niah-dynamic.png, niah-plain.png.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PASSKEY = "The pass key is {value}. Remember it."


def build_tokenizer(out: Path, vocab_size: int = 1024):
    """A byte-level BPE learned on the haystack text itself (digits stay single tokens)."""
    from ilm.eval.niah import haystack_text, sentences
    from ilm.tokenizer import train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(sentences(haystack_text())))
    return train_tokenizer([corpus], out / "tokenizer", vocab_size=vocab_size)


def make_batch(tok, haystack, rng: random.Random, batch: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` rows of prompt + answer, random length in [window / 2, window] (longer
    where the needle needs it) and random depth; right-padded
    to `window` (causal attention: padding after a row's end changes none of its logits); labels on the
    answer tokens only."""
    from ilm.eval.niah import build_prompt, make_needle

    ids = torch.full((batch, window), tok.pad_id, dtype=torch.long)
    labels = torch.full((batch, window), -100, dtype=torch.long)
    for r in range(batch):
        needle = make_needle(PASSKEY, rng)
        answer = tok.encode(" " + needle.value)
        n_ids, q_ids = tok.encode(" " + needle.text), tok.encode(" " + needle.question)
        shortest = 1 + 2 * len(n_ids) + len(q_ids) + len(answer)  # a haystack at least as long as the needle
        length = rng.randint(min(max(window // 2, shortest), window), window)
        p = build_prompt(haystack, n_ids, q_ids, length, rng.random(), rng.randrange(len(haystack.texts)),
                         answer_room=len(answer))
        row = p.ids + answer
        ids[r, : len(row)] = torch.tensor(row)
        labels[r, len(p.ids) - 1 : len(row) - 1] = torch.tensor(answer)  # position t predicts token t + 1
    return ids, labels


def train(tok, window: int, steps: int, seed: int, batch: int = 32, lr: float = 3e-3, log_every: int = 100):
    """A plain loop: AdamW, linear warm-up then cosine to 10% of lr, loss on the answer digits."""
    import math

    from ilm.eval.niah import Haystack
    from ilm.model import build_model, get_preset

    config = get_preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=window, rope_theta=10_000.0,
                        stop_token_ids=tuple(tok.stop_ids))
    model = build_model(config, seed=seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    haystack = Haystack(tok)
    rng = random.Random(seed + 1)
    warmup = max(steps // 20, 1)
    curve = []
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        ids, labels = make_batch(tok, haystack, rng, batch, window)
        logits = model(ids)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            with torch.no_grad():
                mask = labels != -100
                acc = (logits.argmax(-1)[mask] == labels[mask]).float().mean().item()
            curve.append({"step": step, "loss": round(loss.item(), 4), "digit_accuracy": round(acc, 4)})
            print(f"[passkey] step {step:>5} loss {loss.item():.4f} answer-token accuracy {acc:.2%}", flush=True)
    return model.eval(), curve


def experiment(out: Path, window: int = 128, steps: int = 1500, seed: int = 0, trials: int = 4,
               depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0), img: Path | None = None) -> dict:
    """Train, save, evaluate at W, 2W, 4W with dynamic NTK and plain RoPE; `img` gets a copy of the heatmaps."""
    from ilm.eval import niah
    from ilm.model.hf import save_checkpoint

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    tok = build_tokenizer(out)
    model, curve = train(tok, window, steps, seed)
    t_train = time.perf_counter() - t0
    files = {p.name: p.read_bytes() for p in (out / "tokenizer").iterdir() if p.is_file()}
    ckpt = save_checkpoint(model, out / "checkpoint", extra_files=files)
    answer_tokens = len(tok.encode(" 12345"))
    lengths = [window, 2 * window, 4 * window]
    result = niah.evaluate(ckpt, lengths, list(depths), out, compare_ntk=True, needle=PASSKEY,
                           max_new_tokens=answer_tokens, seed=seed + 100, trials=trials, answer_room=answer_tokens)
    t_total = time.perf_counter() - t0
    if img is not None:
        img.parent.mkdir(parents=True, exist_ok=True)
        img.write_bytes((out / "niah.png").read_bytes())
    summary = {"window": window, "steps": steps, "seed": seed, "trials": trials, "lengths": lengths,
               "depths": list(depths), "rope_theta": 10_000.0, "ntk_factor": niah.DEFAULT_NTK_FACTOR,
               "parameters": sum(p.numel() for p in model.parameters()), "train_curve": curve,
               "seconds": {"train": round(t_train, 1), "total": round(t_total, 1)},
               "grid": {name: run["score"]["grid"] for name, run in result["runs"].items()},
               **{name: result["summary"][name] for name in result["runs"]}}
    (out / "passkey.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def print_table(s: dict) -> None:
    print(f"\npasskey retrieval, trained at W = {s['window']} tokens ({s['steps']} steps, {s['parameters']:,} "
          f"parameters), {len(s['depths'])} depths x {s['trials']} needles per length")
    print(f"{'RoPE':<10}" + "".join(f"{n:>9}" for n in s["lengths"]))
    for name in ("dynamic", "plain"):
        print(f"{name:<10}" + "".join(f"{s[name]['by_length'][str(n)]:>9.0%}" for n in s["lengths"]))
    print(json.dumps({"seconds": s["seconds"]}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/passkey")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=4, help="needles per (length, depth) cell")
    parser.add_argument("--img", default=None, help="also copy the heatmaps to this PNG path")
    args = parser.parse_args(argv)
    s = experiment(Path(args.out), args.window, args.steps, args.seed, args.trials,
                   img=Path(args.img) if args.img else None)
    print_table(s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
