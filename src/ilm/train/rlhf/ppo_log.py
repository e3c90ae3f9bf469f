"""What a PPO run writes per update: the metrics row (`metrics.jsonl`), the rollouts file
(`rollouts/update-%06d.jsonl`), and the figure of the metrics (`ppo.png`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ilm.train.losses import masked_mean


def metrics_row(update: int, actor_trains: bool, roll: dict, everything: list[dict], tot: list[float], steps: int,
                grad_norms: dict[str, list[float]], unknown_category: int, rm_cut: int, ppo_epochs: int,
                t_gen: float, t0: float) -> dict[str, Any]:
    """One update's metrics; `tot`: the all-ranks loss token sums (pg, clip, vf, ptx, ptx tokens)."""
    mask, lengths, returns, old_values = roll["mask"], roll["lengths"], roll["returns"], roll["old_values"]
    score, kl = roll["score"], roll["kl"]
    N = len(everything)
    trained_tokens = max(int(mask.sum()) * ppo_epochs, 1)
    resp_len = lengths.float()
    ev_var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    resid = returns - old_values
    resid_var = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
    entropy_tokens = torch.tensor([e for x in everything for e in x["entropy"]])
    return {
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
        "unknown_category": unknown_category,
        "rm_inputs_cut": rm_cut,
        "grad_norm_actor": float(np.mean(grad_norms["actor"])) if grad_norms["actor"] else None,
        "grad_norm_critic": float(np.mean(grad_norms["critic"])),
        "optimizer_steps": steps, "rollout_tokens": int(lengths.sum()),
        "rollout_tokens_per_s": float(lengths.sum()) / max(t_gen, 1e-9),
        "update_s": time.perf_counter() - t0,
    }


def rollout_lines(update: int, everything: list[dict], queries: list[Any], kl: torch.Tensor, texts: list[str],
                  true: list[float] | None) -> str:
    """The rollouts file: one json line per row (`queries`: each row's Query, `texts`: its decoded response)."""
    lines = []
    for j, (x, q) in enumerate(zip(everything, queries)):
        line = {"update": update, "row": x["row"], "query_index": q.index, "messages": q.record["messages"],
                "category": q.record.get("category"), "domain": q.domain, "response": texts[j],
                "response_tokens": len(x["response"]), "rm_score": x["score"],
                "kl": float(kl[j].sum()), "truncated": x["truncated"]}
        if true is not None:
            line["true_reward"] = true[j]
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    return "".join(lines)


def write_atomic(path: Path, text: str) -> None:
    from ilm.data.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


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
