"""`ilm rlhf run RECIPE.toml`: rounds of online RLHF with the fast path and the slow path (docs/recipe.md, Online RLHF).

Round k, top to bottom in `run`:

1. PPO for `updates_per_round` updates (`ilm.train.rlhf.ppo`) from the latest actor, steered by RM_k, its KL
   penalty measured against the SFT model in every round (`reference`), so drift from SFT shows across rounds;
2. fast path: suspects from the round's rollouts (the highest rewards, plus what the detectors flag),
   a reviewer's verdicts, and 20-100 preference pairs (rejected = a rejected suspect; chosen = the
   reviewer's correction, else an approved response to the same query);
3. RM update (`ilm.train.rlhf.patch`): RM_k fine-tuned through the RM trainer on the fast pairs + the slow-path
   labels that have arrived in the inbox (`ilm.train.rlhf.inbox`), with a replay of its earlier data and an
   anchor on the pairs it ranked right; a gate on two numbers (the patch check on held-out reviewer pairs,
   the accuracy on earlier held-out pairs without the flagged pattern) stops the run when either fails.
   The result is RM_{k+1}, and the next round's critic re-warms on it (`critic_rewarm_updates`);
4. slow path: a larger sample of the round's rollouts exported for annotation (`round-kk/slow-export.jsonl`).

The lag of the slow path follows from the order: a label file that lands in the inbox during round k is
first seen at step 3 of round k, so it goes into RM_{k+1}, the reward model of round k+1, and round
k+1's manifest says so (`reward_model_inputs.slow_labels`).

State: everything lives in `run_dir`: `round-kk/` (ppo run, suspects, verdicts, pairs, rm-patch run,
slow export, manifest.json) and `state.json` (the phase reached, the actor and reward model of each
round, the inbox ledger). Every phase writes its outputs before the state moves on, so a rerun after a
crash continues with the phase that was running; inside PPO and the RM fine-tune their own checkpoints
resume at the right update / step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilm.train.rlhf.detectors import (  # noqa: F401 - the detectors are part of this module's interface
    DETECTORS,
    Detector,
    detectors_from_names,
    length_detector,
    repetition,
    repetition_detector,
    robust_z,
)
from ilm.train.rlhf.files import read_jsonl, round_dir, write_json, write_jsonl
from ilm.train.rlhf.inbox import read_pending, reads_for, scan_inbox, slow_labels_to_pairs  # noqa: F401
from ilm.train.rlhf.patch import PatchRejected, gate_line, patch_reward_model, rm_accuracy, verifier_confirms  # noqa: F401
from ilm.train.rlhf.ppo import PPOConfig
from ilm.train.rlhf.review import (
    FileReviewer,
    JudgeReviewer,
    Reviewer,
    Suspect,
    VerifierReviewer,
    build_pairs,
    export_suspects,
    load_function,
    read_verdicts,
    verdict_row,
)

PHASES = ("ppo", "fast", "rm", "slow", "done")


@dataclass
class FastPath:
    top_k: int = 32  # suspects by reward per review batch
    detectors: list[str] = field(default_factory=lambda: ["length", "repetition"])  # names or module:function
    reward_quantile: float = 0.75  # "reward high" for the detectors: at or above this quantile of the round
    outlier_z: float = 3.0  # robust z-score (median / MAD) above which a length or repetition is an outlier
    last_updates: int = 0  # suspects from the round's last N updates only (0: all of them)
    min_pairs: int = 20  # keep reviewing further down the reward order until this many pairs (or none left)
    max_pairs: int = 100
    max_reviews: int = 400  # at most this many suspects reviewed per round
    # the patch (ilm.train.rlhf.patch): continual learning from RM_k, on the run's device and precision
    lr: float = 5e-6  # at or below the RM's own final lr (the 7B RM: 1e-5 -> 5e-6)
    warmup_steps: int = 5
    epochs: int = 12
    replay_ratio: float = 5.0  # earlier training pairs replayed per new pair (>= 1; 5 vs 3: docs/recipe.md)
    replay_flagged: bool = False  # replay earlier pairs that carry the flagged pattern too (they teach the hack)
    anchor_weight: float = 10.0  # squared shortfall of a replayed pair's margin below RM_k's (0: no anchor)
    anchor_cap: float = 1.5  # ... below min(RM_k's margin, this): what it ranked right stays right, magnitudes may move
    neutral_ratio: float = 0.0  # earlier pairs WITH the flagged pattern per new pair, not ranked, margins kept >= 0:
    #                             the pattern may stop deciding them, not reverse (0: none; docs/recipe.md: measured)
    merge: float = 0.8  # RM_{k+1} = merge x the fine-tuned RM + (1 - merge) x RM_k (WiSE-FT; 1: no averaging)
    batch_tokens: int = 16_384
    # the gate: (a) the patch check on held-out reviewer pairs, (b) the earlier held-out pairs without the pattern
    holdout_fraction: float = 0.2  # of the new pairs, kept out of the fine-tune for the patch check
    check_bar: float = 0.9  # (a) must reach this
    accuracy_margin: float = 0.02  # (b) may drop by at most this
    flagged: str = ""  # module:function (pair) -> bool: the earlier pairs carrying the hack; "": found from the pairs
    confirm_with_reviewer: bool = True  # a verifier also judges the earlier pairs with the pattern: backed ones count in (b)
    flagged_min_lift: float = 0.5  # automatic: n-grams in this many more rejected than chosen responses
    check: list[str] = field(default_factory=list)  # extra pair files: accuracy reported before / after


@dataclass
class SlowPath:
    export_size: int = 200  # rollouts exported per round for annotation
    inbox: str = ""  # labelled files (jsonl) land here; "": run_dir/inbox


@dataclass
class ReviewerSection:
    kind: str = "verifier"  # verifier | judge | file
    verifier: str = ""  # module:function (query record, response) -> bool | float | (bool, correction)
    base_url: str = ""  # judge: an OpenAI-compatible endpoint
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"


@dataclass
class RoundsConfig:
    run_dir: str = "runs/rlhf-rounds"
    rounds: int = 3
    updates_per_round: int = 20
    critic_warmup_first_round_only: bool = True  # later rounds continue the critic: no full warm-up again
    critic_rewarm_updates: int = 2  # after an RM patch, the next round's first updates train the critic alone
    reference: str = ""  # the KL reference of every round; "": the SFT model (ppo.actor)
    rm_data: list[str] = field(default_factory=list)  # the first reward model's training pairs (replayed)
    rm_eval: list[str] = field(default_factory=list)  # its held-out pairs (accuracy before / after a patch)
    ppo: PPOConfig = field(default_factory=PPOConfig)  # actor = the SFT model, reward_model = the first RM
    fast: FastPath = field(default_factory=FastPath)
    slow: SlowPath = field(default_factory=SlowPath)
    reviewer: ReviewerSection = field(default_factory=ReviewerSection)


class RoundsError(ValueError):
    """A condition that stops the rounds (a failed accuracy gate, a review still missing)."""


_write_jsonl, _read_jsonl = write_jsonl, read_jsonl  # the names the tests and older callers use


# ----------------------------------------------------------------------------- detectors


def build_detectors(fast: FastPath) -> list[Detector]:
    """The recipe's `fast.detectors`, with its quantile and z for the built-ins (`ilm.train.rlhf.detectors`)."""
    return detectors_from_names(fast.detectors, fast.reward_quantile, fast.outlier_z)


# ----------------------------------------------------------------------------- the fast path


def read_rollouts(ppo_dir: Path, last_updates: int = 0) -> list[dict]:
    files = sorted((ppo_dir / "rollouts").glob("update-*.jsonl"))
    if last_updates:
        files = files[-last_updates:]
    return [r for f in files for r in read_jsonl(f)]


def rank_suspects(records: list[dict], detectors: list[Detector]) -> list[tuple[int, list[str]]]:
    """(record index, reasons) in review order: flagged ones first, then by reward, best first; one per
    distinct (query, response)."""
    reasons: dict[int, list[str]] = {}
    for det in detectors:
        for i, why in det(records):
            reasons.setdefault(int(i), []).append(why)
    order = sorted(range(len(records)), key=lambda i: (i not in reasons, -records[i]["rm_score"], i))
    seen: set[tuple] = set()
    out = []
    for i in order:
        key = (records[i]["query_index"], records[i]["response"])
        if key in seen:
            continue
        seen.add(key)
        rank = reasons.get(i, [])
        out.append((i, rank or [f"top reward {records[i]['rm_score']:.2f}"]))
    return out


def suspect_id(k: int, rec: dict) -> str:
    return f"r{k:02d}-u{rec['update']:06d}-{rec['row']}"


# ----------------------------------------------------------------------------- reviewers from the recipe


def make_reviewer(cfg: RoundsConfig, rdir: Path) -> Reviewer:
    r = cfg.reviewer
    if r.kind == "verifier":
        if not r.verifier:
            raise ValueError("reviewer.kind = verifier needs reviewer.verifier = \"package.module:function\"")
        return VerifierReviewer(load_function(r.verifier))
    if r.kind == "judge":
        if not r.base_url or not r.model:
            raise ValueError("reviewer.kind = judge needs reviewer.base_url and reviewer.model")
        return JudgeReviewer(r.base_url, r.model, os.environ.get(r.api_key_env))
    if r.kind == "file":
        return FileReviewer(rdir / "verdicts.jsonl")
    raise ValueError(f"reviewer.kind must be verifier, judge or file, got {r.kind!r}")


# ----------------------------------------------------------------------------- the loop


def load_state(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def _check(cfg: RoundsConfig) -> None:
    if cfg.rounds < 1 or cfg.updates_per_round < 1:
        raise ValueError("rounds and updates_per_round must be >= 1")
    if not cfg.ppo.actor or not cfg.ppo.reward_model:
        raise ValueError("[ppo] needs actor (the SFT model) and reward_model (the first reward model)")
    if not 0 < cfg.fast.min_pairs <= cfg.fast.max_pairs:
        raise ValueError(f"fast.min_pairs {cfg.fast.min_pairs} must be in [1, fast.max_pairs {cfg.fast.max_pairs}]")
    fp = cfg.fast
    bounds = {"fast.holdout_fraction": (fp.holdout_fraction, 0.0, 0.9), "fast.check_bar": (fp.check_bar, 0.0, 1.0),
              "fast.accuracy_margin": (fp.accuracy_margin, 0.0, 1.0), "fast.replay_ratio": (fp.replay_ratio, 0.0, 1e3),
              "fast.anchor_weight": (fp.anchor_weight, 0.0, 1e6), "fast.lr": (fp.lr, 1e-12, 1.0),
              "fast.flagged_min_lift": (fp.flagged_min_lift, 1e-6, 1.0), "fast.merge": (fp.merge, 1e-6, 1.0),
              "fast.neutral_ratio": (fp.neutral_ratio, 0.0, 1e3)}
    for name, (value, lo, hi) in bounds.items():
        if not lo <= value <= hi:  # NaN fails too
            raise ValueError(f"{name} = {value} must be in [{lo:g}, {hi:g}]")
    if cfg.critic_rewarm_updates < 0 or fp.epochs < 1 or fp.warmup_steps < 0:
        raise ValueError("critic_rewarm_updates and fast.warmup_steps must be >= 0, fast.epochs >= 1")
    for f in cfg.rm_data + cfg.rm_eval + cfg.fast.check:
        if not Path(f).exists():
            raise FileNotFoundError(f"{f}: no such file (rm_data / rm_eval / fast.check)")


def ppo_config(cfg: RoundsConfig, k: int, state: dict) -> PPOConfig:
    """Round k's PPO: the latest actor and critic, RM_k, the SFT model as KL reference, its own run dir,
    `updates_per_round` updates; after an RM patch, `critic_rewarm_updates` critic-only updates first."""
    base = cfg.ppo
    p = dataclasses.replace(base.ppo)
    if k > 1 and cfg.critic_warmup_first_round_only:
        p.critic_warmup_updates = 0
    if k > 1 and state["rms"][str(k)] != state["rms"][str(k - 1)]:  # the critic learnt values of the old RM
        p.critic_rewarm_updates = cfg.critic_rewarm_updates
    return dataclasses.replace(
        base, run_dir=str(round_dir(cfg.run_dir, k) / "ppo"), actor=state["actors"][str(k)],
        reference=cfg.reference or base.reference or base.actor, reward_model=state["rms"][str(k)],
        critic=state["critics"].get(str(k)) or None, ppo=p,
        train=dataclasses.replace(base.train, updates=cfg.updates_per_round, seed=base.train.seed + k - 1,
                                  progress=base.train.progress))


def say(text: str) -> None:
    """A progress line, flushed: the rounds run for minutes to days, often with stdout in a log file."""
    print(f"[rounds] {text}", flush=True)


def run(cfg: RoundsConfig, resume: str = "auto", ppo_train: Callable[..., dict] | None = None,
        reviewer: Reviewer | None = None, reward_fn: Callable[[dict, str], float] | None = None) -> dict[str, Any]:
    """Run (or continue) the rounds; returns the per-round summary. `ppo_train` replaces the PPO engine
    (tests); `reviewer` replaces the recipe's; `reward_fn` is PPO's logged true reward."""
    if ppo_train is None:
        from ilm.train.rlhf.ppo import train as ppo_train
    _check(cfg)
    run_dir = Path(cfg.run_dir)
    inbox = Path(cfg.slow.inbox) if cfg.slow.inbox else run_dir / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    state = load_state(run_dir)
    if state is not None and resume == "never":
        raise ValueError(f"{run_dir} already holds rounds (state.json); use another run_dir or --resume auto")
    if state is None:
        state = {"round": 1, "phase": "ppo", "actors": {"1": cfg.ppo.actor}, "critics": {},
                 "rms": {"1": cfg.ppo.reward_model}, "rm_data": list(cfg.rm_data), "inbox": {}, "rounds": {}}
        write_json(run_dir / "state.json", state)
    else:
        say(f"continuing at round {state['round']}, phase {state['phase']}")

    def advance(phase: str) -> None:
        state["phase"] = phase
        write_json(run_dir / "state.json", state)

    while state["round"] <= cfg.rounds:
        k = state["round"]
        rdir = round_dir(run_dir, k)
        info = state["rounds"].setdefault(str(k), {})
        scan_inbox(inbox, state["inbox"], k)
        if state["phase"] == "ppo":
            info["ppo"] = ppo_round(cfg, k, state, ppo_train, reward_fn)
            advance("fast")
        if state["phase"] == "fast":
            say(f"round {k}/{cfg.rounds}: review of the round's rollouts ({cfg.reviewer.kind} reviewer)")
            info["fast"] = fast_path(cfg, k, rdir, reviewer or make_reviewer(cfg, rdir))
            advance("rm")
        if state["phase"] == "rm":
            scan_inbox(inbox, state["inbox"], k)
            info["rm"] = update_reward_model(cfg, k, rdir, state)
            advance("slow")
        if state["phase"] == "slow":
            info["slow"] = slow_export(cfg, k, rdir)
            write_json(rdir / "manifest.json", manifest(cfg, k, state))
            state["round"] = k + 1
            advance("ppo")
    advance("done")
    summary = {"run_dir": str(run_dir), "rounds": state["rounds"], "reward_models": state["rms"],
               "actors": state["actors"], "inbox": state["inbox"]}
    write_json(run_dir / "summary.json", summary)
    return summary


def ppo_round(cfg: RoundsConfig, k: int, state: dict, ppo_train: Callable[..., dict],
              reward_fn: Callable[[dict, str], float] | None) -> dict[str, Any]:
    """Round k's PPO; its first and last KL to the reference (the SFT model), which carries over rounds."""
    from ilm.train.run import read_metrics

    t0 = time.perf_counter()
    pcfg = ppo_config(cfg, k, state)
    rewarm = pcfg.ppo.critic_rewarm_updates
    say(f"round {k}/{cfg.rounds}: PPO, {pcfg.train.updates} updates" + (f" after {rewarm} critic re-warm updates "
        "(the reward model was patched)" if rewarm else "") + f"; KL reference {pcfg.reference}")
    summary = ppo_train(pcfg, resume="auto", reward_fn=reward_fn)
    exp = summary.get("export") or {}
    state["actors"][str(k + 1)] = exp.get("actor", pcfg.actor)
    state["critics"][str(k + 1)] = exp.get("critic")
    rows = read_metrics(Path(pcfg.run_dir))
    kl = [r["kl"] for r in rows if "kl" in r]
    out = {"run_dir": pcfg.run_dir, "last": summary.get("last"), "seconds": time.perf_counter() - t0,
           "kl_reference": pcfg.reference, "kl_first": kl[0] if kl else None, "kl_last": kl[-1] if kl else None,
           "critic_rewarm_updates": rewarm}
    last = summary.get("last") or {}
    say(f"round {k}/{cfg.rounds}: PPO done in {out['seconds']:.0f} s: RM score {last.get('reward_mean', float('nan')):.3f}, "
        f"KL to the reference {_num(out['kl_first'])} -> {_num(out['kl_last'])}")
    return out


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def fast_path(cfg: RoundsConfig, k: int, rdir: Path, reviewer: Reviewer) -> dict[str, Any]:
    """Suspects -> verdicts -> pairs (round-kk/suspects.jsonl, verdicts.jsonl, fast-pairs.jsonl)."""
    from ilm.tokenizer import load_tokenizer
    from ilm.train.rlhf.ppo import load_queries

    f = cfg.fast
    records = read_rollouts(rdir / "ppo", f.last_updates)
    if not records:
        raise RoundsError(f"{rdir / 'ppo' / 'rollouts'}: no rollouts to review")
    tok = load_tokenizer(cfg.ppo.tokenizer or cfg.ppo.actor)
    meta = json.loads((Path(cfg.ppo.reward_model) / "reward_config.json").read_text())
    conditions = cfg.ppo.data.conditions or meta.get("conditions") or {}
    default = cfg.ppo.data.default_domain or meta.get("default_domain") or "default"
    queries, _ = load_queries(cfg.ppo.data.queries, tok, conditions, default, cfg.ppo.data.max_query_tokens)
    order = rank_suspects(records, build_detectors(f))
    by_id: dict[str, dict] = {}
    suspects: list[Suspect] = []
    for i, reasons in order:
        rec = records[i]
        sid = suspect_id(k, rec)
        by_id[sid] = rec
        suspects.append(Suspect(sid, queries[rec["query_index"]].record, rec["response"], float(rec["rm_score"]),
                                reasons))
    flagged = sum(not s.reasons[0].startswith("top reward") for s in suspects)
    verdict_file = rdir / "verdicts.jsonl"
    if isinstance(reviewer, FileReviewer):
        first = suspects[: max(f.top_k, flagged)]
        if not reviewer.ready():
            path = export_suspects(first, rdir / "suspects.jsonl")
            raise RoundsError(f"round {k}: {len(first)} suspects exported to {path}; fill in each line's verdict "
                              f"(approve/reject, optional correction), run `ilm rlhf review import {cfg.run_dir} FILE`"
                              ", then rerun `ilm rlhf run`")
        verdicts = reviewer.review(first)
        reviewed = first
    elif verdict_file.exists():  # a rerun: the verdicts of the crashed attempt stand
        verdicts, _ = read_verdicts(verdict_file, set(by_id))
        decided = {v.id for v in verdicts}
        reviewed = [s for s in suspects if s.id in decided]
    else:
        verdicts, reviewed = [], []
        pos = 0
        while pos < len(suspects) and len(reviewed) < f.max_reviews:
            batch = suspects[pos : pos + max(f.top_k, flagged if pos == 0 else 0)]
            pos += len(batch)
            reviewed += batch
            verdicts += reviewer.review(batch)
            if len(build_pairs(reviewed, verdicts, by_id)[0]) >= f.min_pairs:
                break
        export_suspects(reviewed, rdir / "suspects.jsonl")
        write_jsonl(verdict_file, [verdict_row(v) for v in verdicts])
    pairs, counts = build_pairs(reviewed, verdicts, by_id)
    pairs = sorted(pairs, key=lambda p: -p["rejected_reward"])[: f.max_pairs]
    write_jsonl(rdir / "fast-pairs.jsonl", pairs)
    report = {"rollouts": len(records), "flagged_by_detectors": flagged, "reviewed": len(reviewed),
              "verdicts": len(verdicts), **counts, "pairs": len(pairs), "pairs_file": str(rdir / "fast-pairs.jsonl")}
    if len(pairs) < f.min_pairs:
        report["note"] = f"only {len(pairs)} pairs (< fast.min_pairs {f.min_pairs}): nothing more to find"
    say(f"round {k} fast path: {len(reviewed)} suspects reviewed ({flagged} flagged by detectors), "
          f"{counts['rejected']} rejected -> {len(pairs)} pairs")
    return report


def update_reward_model(cfg: RoundsConfig, k: int, rdir: Path, state: dict) -> dict[str, Any]:
    """RM_{k+1} = RM_k patched with this round's fast pairs and the inbox lines that have arrived since the
    last read; the gate's failure stops the run (RoundsError, one line)."""
    new_files = []
    fast_file = rdir / "fast-pairs.jsonl"
    if fast_file.exists() and fast_file.stat().st_size:
        new_files.append(str(fast_file))
    exported = _exported_rollouts(cfg, k)
    slow_reports = {}
    for name, entry in sorted(state["inbox"].items()):
        if not entry.get("pending"):
            continue
        pairs, rep = read_pending(entry, k, exported)
        slow_reports[name] = rep
        for problem in rep["problems"][:5]:
            say(f"slow label file: {problem}")
        if pairs:
            new_files.append(str(write_jsonl(rdir / "slow-pairs" / name, pairs)))
    rm_k = state["rms"][str(k)]
    if not new_files:
        state["rms"][str(k + 1)] = rm_k
        say(f"round {k}/{cfg.rounds}: no new pairs, the reward model stays")
        return {"patched": False, "reward_model": rm_k, "slow_labels": slow_reports}
    say(f"round {k}/{cfg.rounds}: reward-model patch on {', '.join(Path(f).name for f in new_files)}")
    try:
        report = patch_reward_model(rm_k, new_files, state["rm_data"], rdir / "rm-patch", cfg.fast, cfg.rm_eval,
                                    cfg.ppo.train, seed=cfg.ppo.train.seed + k, confirm=_confirm(cfg),
                                    earlier_patterns=state.get("patterns", []))
    except PatchRejected as err:
        raise RoundsError(f"round {k}: {err}") from None
    state["rms"][str(k + 1)] = report["export"]
    state["rm_data"] = state["rm_data"] + new_files
    state["patterns"] = [p for p in report["gate"]["pattern"] if ":" not in p]  # n-grams, not a recipe's function
    say(f"round {k}/{cfg.rounds}: reward model patched on {report['new_pairs']} new + {report['replayed']} replayed "
        f"pairs: {gate_line(report['gate'])}")
    return {"patched": True, **report, "slow_labels": slow_reports, "new_files": new_files}


def _confirm(cfg: RoundsConfig) -> Callable[[dict], bool] | None:
    """A verifier reviewer can judge an earlier pair on its own: the patch's gate asks it (`patch.pattern_check`)."""
    if cfg.fast.confirm_with_reviewer and cfg.reviewer.kind == "verifier" and cfg.reviewer.verifier:
        return verifier_confirms(load_function(cfg.reviewer.verifier))
    return None


def _exported_rollouts(cfg: RoundsConfig, k: int) -> dict[str, dict]:
    """Every rollout exported for annotation so far, by id (slow-path verdict rows refer to these)."""
    out: dict[str, dict] = {}
    for j in range(1, k + 1):
        path = round_dir(cfg.run_dir, j) / "slow-export.jsonl"
        if path.exists():
            out.update({r["id"]: r for r in read_jsonl(path)})
    return out


def slow_export(cfg: RoundsConfig, k: int, rdir: Path) -> dict[str, Any]:
    records = read_rollouts(rdir / "ppo")
    rng = random.Random(cfg.ppo.train.seed + k)
    picked = rng.sample(records, min(cfg.slow.export_size, len(records)))
    rows = [{"id": suspect_id(k, r), "round": k, "query_index": r["query_index"], "messages": r["messages"],
             "domain": r.get("domain"), "response": r["response"], "rm_score": r["rm_score"], "verdict": "",
             "correction": ""} for r in picked]
    path = write_jsonl(rdir / "slow-export.jsonl", rows)
    return {"exported": len(rows), "file": str(path)}


def manifest(cfg: RoundsConfig, k: int, state: dict) -> dict[str, Any]:
    """What round k used and produced; `reward_model_inputs` says what RM_k was built from (which inbox
    lines of which file, read in which round)."""
    prev = state["rounds"].get(str(k - 1), {}).get("rm", {})
    return {
        "round": k, "actor": state["actors"][str(k)], "reward_model": state["rms"][str(k)],
        "kl_reference": state["rounds"].get(str(k), {}).get("ppo", {}).get("kl_reference"),
        "reward_model_inputs": {"base": state["rms"].get(str(k - 1)) if k > 1 else None,
                                "fast_pairs": str(round_dir(cfg.run_dir, k - 1) / "fast-pairs.jsonl") if k > 1 else None,
                                "slow_labels": reads_for(state["inbox"], k), "patched": prev.get("patched", False)},
        "ppo_run": str(round_dir(cfg.run_dir, k) / "ppo"), "next_actor": state["actors"].get(str(k + 1)),
        "next_reward_model": state["rms"].get(str(k + 1)),
        "next_reward_model_slow_labels": reads_for(state["inbox"], k + 1),
        "report": state["rounds"].get(str(k), {}),
    }


def import_verdicts(run_dir: str | Path, file: str | Path, k: int | None = None) -> dict[str, Any]:
    """A person's reviewed file -> round-kk/verdicts.jsonl (the good lines); malformed lines named and counted."""
    if not Path(file).exists():
        raise FileNotFoundError(f"{file}: no such file")
    if k is None:
        state = load_state(Path(run_dir))
        if state is None:
            raise FileNotFoundError(f"{run_dir}: no state.json; is this an `ilm rlhf run` directory?")
        k = int(state["round"])
    rdir = round_dir(run_dir, k)
    suspects = rdir / "suspects.jsonl"
    if not suspects.exists():
        have = sorted(int(p.parent.name.split("-")[1]) for p in Path(run_dir).glob("round-*/suspects.jsonl"))
        rounds = f"pass --round with one that has: {', '.join(map(str, have))}" if have else "no round has any yet"
        raise FileNotFoundError(f"round {k} of {run_dir} has no suspects to review ({suspects} not found); {rounds}")
    verdicts, report = read_verdicts(file, {r["id"] for r in read_jsonl(suspects)})
    write_jsonl(rdir / "verdicts.jsonl", [verdict_row(v) for v in verdicts])
    return {**report, "into": str(rdir / "verdicts.jsonl"), "round": k}
