"""The report's RLHF section: the rounds' models and task, per-update curves read from the PPO rollouts, the
policy evaluation the demo printed, and the fast path's reviewed suspects, patches and gate numbers.

Files read (all optional): rlhf-rounds/config.toml (or rlhf/config.toml), the recipe's queries files,
rlhf-rounds/summary.json or state.json, round-kk/ppo/rollouts/*.jsonl (or rlhf/rollouts), round-kk/fast-pairs.jsonl,
and the demo's report.json ("rlhf" stage: the policy evaluation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ilm.report import figures
from ilm.report.html import Safe, details, figure, join, not_run, num, p, section, table, tag
from ilm.report.run import STAGES, Run, _model_line


def _first_query(run: Run, files: Any) -> tuple[str, int] | None:
    """The first PPO query's user text and the number of queries, from the recipe's queries files."""
    if isinstance(files, str):
        files = [files]
    total, first = 0, None
    for f in files or []:
        path = Path(f) if Path(f).is_absolute() else Path.cwd() / f
        try:
            lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            continue
        total += len(lines)
        if first is None and lines:
            try:
                first = _prompt(json.loads(lines[0]).get("messages"))
            except (ValueError, AttributeError):
                first = lines[0][:200]
    return (first, total) if first is not None else None


def _rlhf_models(run: Run) -> list[Safe]:
    """The RLHF stage's policy, reward model and task (its queries), from the resolved recipe."""
    cfg = run.toml("rlhf-rounds/config.toml")
    ppo = cfg.get("ppo", {}) if cfg else run.toml("rlhf/config.toml")
    if not ppo:
        return [_model_line(run, "Policy", None)]
    data = ppo.get("data", {}) if isinstance(ppo.get("data"), dict) else {}
    actor = ppo.get("actor")
    chain = (run.path / "sft" / "final").resolve()
    separate = actor and (run.path / "sft").is_dir() and Path(str(actor)).resolve() != chain
    out = [_model_line(run, "Policy (actor and frozen reference)", actor,
                       " — a separate task model, not this run's SFT model: a 2-layer model trained from scratch "
                       "with its own tokenizer on skills a tiny model learns in a minute or two (repeat a number, use the "
                       "weather tool's value, find a needle), which the chain's briefly trained model does not"
                       if separate else ""),
           _model_line(run, "Reward model", ppo.get("reward_model"))]
    q = _first_query(run, data.get("queries"))
    task = (f"{q[1]:,} PPO queries such as \u201c{q[0]}\u201d" if q else "PPO queries not found") + (
        f"; true reward (logged, never trained on): {ppo['true_reward']}" if ppo.get("true_reward") else "")
    out.append(p(join([tag("strong", "Task: "), task]), class_="model"))
    return out


def _round_curves(run_dir: Path) -> list[dict[str, Any]]:
    """Per round and PPO update, from the rollouts of rlhf-rounds/round-kk/ppo (or of a single `ilm rlhf ppo`
    run in rlhf/, as round 1): mean RM score, true reward (None where the rollouts do not carry one),
    loophole rate (the demo task's planted phrase) and KL."""
    from ilm.train.rlhf.rounds import read_rollouts
    from ilm.train.rlhf.synthetic import has_loophole

    ppo_dirs = [(int(d.name.split("-")[1]), d / "ppo") for d in sorted((run_dir / "rlhf-rounds").glob("round-*"))]
    if not ppo_dirs:
        ppo_dirs = [(1, run_dir / "rlhf")]
    out = []
    for k, ppo in ppo_dirs:
        by_update: dict[int, list[dict]] = {}
        for r in read_rollouts(ppo):
            by_update.setdefault(r.get("update", 0), []).append(r)
        if not by_update:
            continue
        per = []
        for u in sorted(by_update):
            rs = by_update[u]
            truth = [r["true_reward"] for r in rs if isinstance(r.get("true_reward"), (int, float))]
            per.append({"update": u, "rm_score": sum(r.get("rm_score", 0.0) for r in rs) / len(rs),
                        "true_reward": sum(truth) / len(truth) if truth else None,
                        "loophole_rate": sum(has_loophole(r.get("response", "")) for r in rs) / len(rs),
                        "kl": sum(r.get("kl", 0.0) for r in rs) / len(rs), "rollouts": len(rs)})
        out.append({"round": k, "per_update": per})
    return out


def _mean_updates(ups: list[dict[str, Any]]) -> dict[str, float | None]:
    """Rollout-weighted means of per-update figures (None where no update carries the figure)."""
    out: dict[str, float | None] = {}
    for k in ("rm_score", "true_reward", "loophole_rate", "kl"):
        have = [(u[k], u.get("rollouts", 1)) for u in ups if isinstance(u.get(k), (int, float))]
        out[k] = sum(v * n for v, n in have) / sum(n for _, n in have) if have else None
    return out


def _acc(x: Any) -> str:
    return f"{x['accuracy']:.0%}" if isinstance(x, dict) and isinstance(x.get("accuracy"), (int, float)) else "—"


def rlhf(run: Run) -> Safe:
    curves = _round_curves(run.path)
    if not curves:
        return not_run("rlhf", STAGES[6][2], "no rlhf-rounds/round-*/ppo/rollouts (nor rlhf/rollouts)")
    state = run.json("rlhf-rounds/summary.json") or run.json("rlhf-rounds/state.json") or {}
    info = state.get("rounds", {})
    rows = []
    for c in curves:
        ups = c["per_update"]
        quarter = max(len(ups) // 4, 1)
        first, last = _mean_updates(ups[:quarter]), _mean_updates(ups[-quarter:])
        rows.append([c["round"], len(ups), *(f"{num(first[k])} → {num(last[k])}" for k in
                                             ("rm_score", "true_reward", "loophole_rate", "kl"))])
    body = [*_rlhf_models(run),
            figure(figures.rounds_curves(curves, "Online RLHF: PPO updates, round after round"),
                   "Means over each update's rollouts. True reward: the task's verifier (where the rollouts carry "
                   "it); loophole rate: responses with the phrase the reward model was planted to over-reward."),
            p("Per round: the mean over the rollouts of its first quarter of updates → of its last quarter (as the "
              "demo's console prints them).", class_="note"),
            table(["round", "updates", "RM score (first → last quarter)", "true reward", "loophole rate", "KL"], rows)]
    policies = [x for x in (run.stage("rlhf") or {}).get("policies") or [] if isinstance(x, dict)]
    if policies:  # the demo's policy evaluation: the actors themselves, the same fresh queries for each
        body += [p(f"The policy itself, sampled as in PPO on the same {policies[0].get('queries', '—')} fresh queries "
                   "(as the demo's console prints it): the SFT start and the actor after each round.", class_="note"),
                 table(["policy", "true reward", "loophole rate"],
                       [["SFT start" if x.get("after_round") == 0 else f"after round {x.get('after_round')}",
                         num(x.get("true_reward")), num(x.get("loophole_rate"))] for x in policies])]
    fast_rows, patches = [], []
    for k in sorted(info, key=int):
        f, r = info[k].get("fast") or {}, info[k].get("rm") or {}
        before, after, gate = r.get("before") or {}, r.get("after") or {}, r.get("gate") or {}
        fast_rows.append([int(k), f.get("rollouts", "—"), f.get("flagged_by_detectors", "—"), f.get("reviewed", "—"),
                          f.get("rejected", "—"), f.get("pairs", "—"), "yes" if r.get("patched", "export" in r) else "no",
                          f"{_pct(gate.get('check_before'))} → {_pct(gate.get('check'))}",
                          f"{_pct(gate.get('earlier_clean_before'))} → {_pct(gate.get('earlier_clean_after'))}",
                          f"{_acc(before.get('extra_check'))} → {_acc(after.get('extra_check'))}"])
        pairs = run.jsonl(f"rlhf-rounds/round-{int(k):02d}/fast-pairs.jsonl")
        if pairs:
            patches.append(details(f"Round {k}: the {len(pairs)} fast-path pairs that patched the reward model",
                                   table(["prompt", "rejected (reviewed suspect)", "RM score", "chosen", "chosen from"],
                                         [[_prompt(x.get("prefix")), x.get("rejected", ""), x.get("rejected_reward", "—"),
                                           x.get("chosen", ""), x.get("chosen_from", "")] for x in pairs[:40]])))
    if fast_rows:
        body += [tag("h3", "Fast path: reviewed suspects and reward-model patches"),
                 table(["round", "rollouts", "flagged by detectors", "reviewed", "rejected", "pairs", "RM patched",
                        "patch check (held-out reviewer pairs)", "earlier pairs without the flagged pattern",
                        "fast.check pairs (held-out loophole pairs)"], fast_rows), *patches]
    return section("rlhf", STAGES[6][2], join(body))


def _pct(x: Any) -> str:
    """A gate number as the rounds' console prints it (`ilm.train.rlhf.patch.gate_line`)."""
    return "—" if x is None else f"{x:.1%}"


def _prompt(prefix: Any) -> str:
    if isinstance(prefix, list):
        users = [m.get("content", "") for m in prefix if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else json.dumps(prefix)[:200]
    return str(prefix or "")
