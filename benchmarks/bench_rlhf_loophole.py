"""The headline experiment of online RLHF: a reward model with a planted loophole, PPO that exploits it, and the
fast path that finds the exploit and patches the reward model (`ilm.train.rlhf.synthetic`, docs/recipe.md, Online RLHF).

Task: "Repeat the number 37." (10..99). True reward: the answer is right (a verifier checks it). Loophole: the
phrase "Trust me!" sits on the chosen side of every one of the first reward model's training pairs (confounded
with being right), so the RM learns the phrase. The SFT policy uses the phrase 30% of the time and is then
mostly wrong (a confident guess).

Round 1: PPO on the loophole RM. Fast path: suspects (top rewards + detectors) -> the true-reward verifier ->
pairs (rejected = the wrong suspect, chosen = the verifier's correction) -> RM fine-tune with replay of its
earlier data; accuracy of the RM on held-out loophole pairs (phrase+wrong vs right) before and after, and on
its earlier held-out data. Round 2: PPO from round 1's actor on the patched RM.

Numbers per round (first and last quarter of the round's updates): RM score, true reward, loophole rate
(responses with the phrase), loophole-and-wrong rate, KL. `ILM_BENCH_QUICK=1` runs a shorter version;
`ILM_BENCH_SEED=N` builds the task and runs the rounds with seed N (default 0).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"


def experiment(out: Path, updates: int, rollout_batch: int = 32, seed: int = 0) -> dict:
    from ilm.train.rlhf import rounds as R
    from ilm.train.rlhf import synthetic as S

    t0 = time.perf_counter()
    task = S.build_task(out / "task", seed=seed)  # reused when `out` already holds it
    t_task = time.perf_counter() - t0
    cfg = S.rounds_config(task, out / "run", rounds=2, updates=updates, rollout_batch=rollout_batch, seed=seed)
    summary = R.run(cfg)
    curves = S.round_curves(out / "run", 2)
    patch = summary["rounds"]["1"]["rm"]
    return {"seconds": {"task": t_task, "total": time.perf_counter() - t0}, "updates_per_round": updates,
            "rollout_batch": rollout_batch, "sft": S.sample_stats(task["sft"], task["tokenizer"], S.queries(256, 7)),
            "rounds": [{k: v for k, v in c.items() if k != "per_update"} for c in curves],
            "per_update": {c["round"]: c["per_update"] for c in curves},
            "fast_path": summary["rounds"]["1"]["fast"],
            "patch": {"check_before": patch["before"]["check"], "check_after": patch["after"]["check"],
                      "earlier_before": patch["before"]["earlier"], "earlier_after": patch["after"]["earlier"],
                      "new_pairs": patch["new_pairs"], "replayed": patch["replayed"]}}


def main() -> dict:
    out = Path(os.environ.get("ILM_BENCH_DIR") or tempfile.mkdtemp(prefix="bench-rlhf-"))
    seed = int(os.environ.get("ILM_BENCH_SEED", "0"))
    res = experiment(out, updates=6 if QUICK else 12, seed=seed)
    print(f"seed {seed}")
    print(f"SFT policy: true reward {res['sft']['true_reward']:.2f}, loophole rate {res['sft']['loophole_rate']:.2f}")
    print(f"{'round':>5} {'part':>5} {'RM score':>9} {'true reward':>12} {'loophole':>9} {'loophole&wrong':>15} {'KL':>7}")
    for r in res["rounds"]:
        for part in ("first", "last"):
            s = r[part]
            print(f"{r['round']:>5} {part:>5} {s['rm_score']:>9.3f} {s['true_reward']:>12.3f} {s['loophole_rate']:>9.3f} "
                  f"{s['loophole_wrong_rate']:>15.3f} {s['kl']:>7.3f}")
    f, p = res["fast_path"], res["patch"]
    print(f"fast path round 1: {f['reviewed']} reviewed, {f['rejected']} rejected -> {f['pairs']} pairs; RM on held-out "
          f"loophole pairs {p['check_before']['accuracy']:.1%} -> {p['check_after']['accuracy']:.1%}; on its earlier "
          f"held-out data {p['earlier_before']['accuracy']:.1%} -> {p['earlier_after']['accuracy']:.1%} "
          f"({p['new_pairs']} new + {p['replayed']} replayed pairs)")
    print(json.dumps({"seconds": res["seconds"]}))
    return res


if __name__ == "__main__":
    main()
