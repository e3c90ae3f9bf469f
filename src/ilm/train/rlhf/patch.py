"""The fast path's reward-model patch, as continual learning, and the gate it must pass (docs/recipe.md, Online RLHF).

RM_k is fine-tuned into RM_{k+1} through the same trainer as `ilm rm train` (`ilm.train.reward.train`: its
device, precision, FSDP / DDP and memory check, taken from the run's `[ppo.train]`), starting from RM_k's
export (backbone and head) with:

- a learning rate at or below the RM's own final one (`fast.lr`), after a warm-up (`fast.warmup_steps`);
- the new pairs (the reviewer's, and the slow path's labels) mixed with a replay of the RM's earlier
  training pairs, `fast.replay_ratio` of them per new pair (>= 1 by default);
- an anchor: on the replayed pairs, a squared error between the patched RM's score margin and RM_k's
  (`fast.anchor_weight`, `ilm.train.reward.RMLoss.anchor_weight`), so what RM_k ranked right stays ranked
  about as firmly, and only the hack moves;
- optionally (`fast.neutral_ratio`), earlier pairs that carry the flagged pattern, not ranked but held at a
  margin >= 0: the pattern may stop deciding them, but not turn into its opposite (`RMData.neutral`);
- weight averaging (WiSE-FT): the export is `fast.merge` x the fine-tuned weights + the rest x RM_k's
  (`ilm.train.reward.RMTrain.merge_init`); the gate judges the average, which is what PPO then uses.

The gate, on two numbers, both from the trainer's evaluation on the run's device:

(a) the patch check: the patched RM's accuracy on the reviewer's pairs held out of the fine-tune
    (`fast.holdout_fraction`); it must reach `fast.check_bar`;
(b) the accuracy on the RM's earlier held-out pairs that do *not* exhibit the flagged pattern, before and
    after; it may drop by at most `fast.accuracy_margin`. The flagged pattern is what the rejected
    responses of the new pairs share and their chosen ones lack (`flagged_ngrams`), or a recipe's own
    `fast.flagged` function; an earlier pair exhibits it when its chosen response carries the pattern and
    its rejected one does not: the patch is meant to change those pairs, and they are not counted.

A failed gate raises `PatchRejected` (one line: both numbers, the bar, what to change).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ilm.train.rlhf.files import read_jsonl, write_jsonl
from ilm.train.rlhf.review import load_function

if TYPE_CHECKING:
    from ilm.train.rlhf.ppo import PPOTrain
    from ilm.train.rlhf.rounds import FastPath


Confirm = Callable[[dict], bool]


class PatchRejected(ValueError):
    """The patched reward model failed the gate: it forgets what it ranked right, or did not learn the fix."""


# ----------------------------------------------------------------------------- the flagged pattern


def text_of(response: Any) -> str:
    """A pair's response (a string, a message or a list of messages) as plain text."""
    if isinstance(response, str):
        return response
    if isinstance(response, dict):
        return str(response.get("content") or "")
    if isinstance(response, list):
        return "\n".join(text_of(m) for m in response)
    return ""


def _ngrams(text: str, max_n: int) -> set[str]:
    words = text.split()
    return {" ".join(words[i : i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1)}


def flagged_ngrams(pairs: list[dict], min_lift: float = 0.5, max_n: int = 3) -> list[str]:
    """Word n-grams that the rejected responses of `pairs` share and their chosen ones lack: present in at
    least `min_lift` more of the rejected than of the chosen (the hack the reviewer rejected, e.g. a phrase)."""
    if not pairs:
        return []
    rej = [_ngrams(text_of(p["rejected"]), max_n) for p in pairs]
    cho = [_ngrams(text_of(p["chosen"]), max_n) for p in pairs]
    counts: dict[str, int] = {}
    for grams in rej:
        for g in grams:
            counts[g] = counts.get(g, 0) + 1
    lift = {g: (c - sum(g in x for x in cho)) / len(pairs) for g, c in counts.items()}
    found = sorted((g for g, v in lift.items() if v >= min_lift), key=lambda g: (-lift[g], -len(g), g))
    return [g for g in found if not any(g != h and g in h for h in found)][:10]  # the longest forms only


def pattern_check(fast: FastPath, new_pairs: list[dict], confirm: Confirm | None = None,
                  earlier: list[str] = ()) -> tuple[Callable[[dict], bool], list[str]]:
    """`carries(pair)`: does an earlier pair exhibit the flagged pattern? With the n-grams found (if automatic).

    A pair whose chosen response carries the pattern and whose rejected one does not is flagged, unless
    `confirm(pair)` (the reviewer, when it can judge a pair on its own, like a verifier) backs its ranking:
    then the pattern rides along with a preference that holds anyway, and the pair must keep its ranking.
    `earlier`: the patterns flagged by the earlier patches, which stay flagged (what they unlearned may stay so)."""
    if fast.flagged:
        fn = load_function(fast.flagged)
        return lambda pair: bool(fn(pair)), [fast.flagged]
    grams = sorted(set(earlier) | set(flagged_ngrams(new_pairs, fast.flagged_min_lift)))  # earlier patches' too

    def carries(pair: dict) -> bool:
        chosen, rejected = text_of(pair.get("chosen")), text_of(pair.get("rejected"))
        flagged = any(g in chosen and g not in rejected for g in grams)
        return flagged and not (confirm is not None and confirm(pair))

    return carries, grams


def prefix_of(pair: dict) -> list[dict]:
    """A pair's conversation before the responses (`prefix`, or `prompt` as one user turn)."""
    if isinstance(pair.get("prefix"), list):
        return pair["prefix"]
    return [{"role": "user", "content": pair["prompt"]}] if isinstance(pair.get("prompt"), str) else []


def verifier_confirms(judge: Callable[[dict, str], Any]) -> Confirm:
    """`confirm(pair)` from a verifier (record, response) -> bool | float | (bool, correction): the chosen
    response passes and the rejected one fails."""
    def ok(value: Any) -> bool:
        return bool(value[0] if isinstance(value, tuple) else value)

    def confirm(pair: dict) -> bool:
        record = {"messages": prefix_of(pair), "category": pair.get("domain")}
        return ok(judge(record, text_of(pair["chosen"]))) and not ok(judge(record, text_of(pair["rejected"])))

    return confirm


# ----------------------------------------------------------------------------- the patch


def patch_reward_model(rm_dir: str, new_files: list[str], earlier_files: list[str], out_dir: Path, fast: FastPath,
                       eval_files: list[str], train: PPOTrain, seed: int = 0,
                       confirm: Confirm | None = None, earlier_patterns: list[str] = ()) -> dict[str, Any]:
    """RM_{k+1}: `rm_dir` fine-tuned on the new pairs + a replay of `earlier_files`, anchored; the gate's
    numbers before and after (report["gate"]). Raises PatchRejected when the gate fails."""
    from ilm.train.optim import OptimConfig
    from ilm.train.reward import RMConfig, RMData, RMLoss, RMTrain
    from ilm.train.reward import train as train_rm

    rng = random.Random(seed)
    new = [r for f in new_files for r in read_jsonl(f)]
    rng.shuffle(new)
    n_held = int(len(new) * fast.holdout_fraction)
    held, fit = new[:n_held], new[n_held:]
    carries, pattern = pattern_check(fast, new, confirm, list(earlier_patterns))
    every = [r for f in earlier_files for r in read_jsonl(f)]
    earlier = [r for r in every if fast.replay_flagged or not carries(r)]
    replay = rng.sample(earlier, min(len(earlier), round(fast.replay_ratio * len(fit))))
    flagged = [r for r in every if carries(r)] if fast.neutral_ratio else []
    neutral = rng.sample(flagged, min(len(flagged), round(fast.neutral_ratio * len(fit))))
    earlier_eval = [r for f in eval_files for r in read_jsonl(f)]
    clean = [r for r in earlier_eval if not carries(r)]
    anchored = [r for r in replay if not carries(r)]  # the flagged ones are replayed, free to change

    data = out_dir / "data"
    sets = {"check": [str(write_jsonl(data / "held-out-new.jsonl", held))] if held else [],
            "earlier_clean": [str(write_jsonl(data / "earlier-clean.jsonl", clean))] if clean else [],
            "earlier": list(eval_files), "extra_check": list(fast.check)}
    meta = json.loads((Path(rm_dir) / "reward_config.json").read_text())
    cfg = RMConfig(
        run_dir=str(out_dir), tokenizer=str(_tokenizer_only(Path(rm_dir), out_dir / "tokenizer")), init=rm_dir,
        reward_token=meta["reward_token"],
        data=RMData(train=[str(write_jsonl(data / "new.jsonl", fit + [r for r in replay if carries(r)]))],
                    anchor=[str(write_jsonl(data / "replay-anchored.jsonl", anchored))] if anchored else [],
                    neutral=[str(write_jsonl(data / "replay-neutral.jsonl", neutral))] if neutral else [],
                    eval_sets={k: v for k, v in sets.items() if v}, conditions=meta["conditions"],
                    default_domain=meta["default_domain"], max_length=meta["max_length"]),
        loss=RMLoss(anchor_weight=fast.anchor_weight, anchor_cap=fast.anchor_cap),
        optim=OptimConfig(lr=fast.lr, warmup_steps=fast.warmup_steps, final_lr_fraction=1.0, weight_decay=0.0),
        train=RMTrain(batch_tokens=max(fast.batch_tokens, 2 * meta["max_length"]), epochs=fast.epochs, seed=seed,
                      precision=train.precision, device=train.device, fsdp=train.fsdp, compile=train.compile,
                      activation_checkpointing=train.activation_checkpointing, deterministic=train.deterministic,
                      progress=train.progress, checkpoint_every=10_000, eval_every=10_000, mixed_batches=True,
                      merge_init=fast.merge))
    summary = train_rm(cfg, resume="auto")
    ev = summary.get("eval_sets", {})

    def acc(name: str, when: str) -> float | None:
        return ev[name][when]["accuracy"] if name in ev else None

    before = {name: {"accuracy": acc(name, "before"), "pairs": ev[name]["before"]["pairs_by_domain"]} for name in ev}
    after = {name: {"accuracy": acc(name, "after"), "pairs": ev[name]["after"]["pairs_by_domain"]} for name in ev}
    gate = {"check": acc("check", "after"), "check_before": acc("check", "before"), "check_pairs": len(held),
            "check_bar": fast.check_bar, "earlier_clean_before": acc("earlier_clean", "before"),
            "earlier_clean_after": acc("earlier_clean", "after"), "earlier_clean_pairs": len(clean),
            "earlier_flagged_pairs": len(earlier_eval) - len(clean), "accuracy_margin": fast.accuracy_margin,
            "pattern": pattern}
    report = {"new_pairs": len(fit), "held_out": len(held), "replayed": len(replay), "steps": summary["steps"],
              "merge": fast.merge, "neutral": len(neutral),
              "export": summary["export"], "before": before, "after": after, "gate": gate}
    problem = gate_problem(gate)
    report["gate"]["passed"] = problem is None
    write_jsonl(out_dir / "gate.jsonl", [report])
    if problem:
        raise PatchRejected(f"{problem}; the patch is kept in {out_dir} (gate.jsonl) but not used: lower fast.lr, "
                            f"raise fast.replay_ratio or fast.anchor_weight, or review more pairs")
    return report


def gate_problem(gate: dict[str, Any]) -> str | None:
    """Why the gate fails, in one line (None: it passes). Both numbers are named either way."""
    check, b0, b1 = gate["check"], gate["earlier_clean_before"], gate["earlier_clean_after"]
    both = (f"patch check {_pct(check)} on {gate['check_pairs']} held-out reviewer pairs (bar {_pct(gate['check_bar'])}), "
            f"earlier pairs without the flagged pattern {_pct(b0)} -> {_pct(b1)}")
    if b0 is not None and b1 is not None and b0 - b1 > gate["accuracy_margin"] + 1e-9:  # 2.0 points is not > 2
        return (f"the patched reward model forgets: {both}, a drop of {100 * (b0 - b1):.1f} points > "
                f"fast.accuracy_margin {gate['accuracy_margin']}")
    if check is not None and check < gate["check_bar"]:
        return f"the patched reward model did not learn the fix: {both}"
    return None


def gate_line(gate: dict[str, Any]) -> str:
    """The gate's two numbers as the console and the demo's report print them."""
    return (f"patch check {_pct(gate['check_before'])} -> {_pct(gate['check'])} on {gate['check_pairs']} held-out "
            f"reviewer pairs (bar {_pct(gate['check_bar'])}); earlier pairs without the flagged pattern "
            f"{_pct(gate['earlier_clean_before'])} -> {_pct(gate['earlier_clean_after'])} "
            f"({gate['earlier_clean_pairs']} pairs, margin {100 * gate['accuracy_margin']:.0f} points)")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _tokenizer_only(export: Path, out: Path) -> Path:
    """The tokenizer files of an export, alone: the RM trainer copies its `tokenizer` dir into the new export,
    and the old export's weights must not ride along."""
    out.mkdir(parents=True, exist_ok=True)
    for f in export.iterdir():
        if f.is_file() and ("tokenizer" in f.name or f.name == "special_tokens_map.json"):
            (out / f.name).write_bytes(f.read_bytes())
    return out


def rm_accuracy(rm_dir: str | Path, files: list[str], device: str = "auto", precision: str = "bf16",
                batch_tokens: int = 4096) -> dict[str, Any] | None:
    """Pairwise accuracy of a reward-model export on preference files, on the given device (None: no files)."""
    if not files:
        return None
    from ilm.tokenizer import load_tokenizer
    from ilm.train.distributed import init_world
    from ilm.train.reward import RMData, encode_pairs, evaluate
    from ilm.train.reward_model import load_reward_model
    from ilm.train.run import autocast_for

    world = init_world(device)
    model, meta = load_reward_model(rm_dir)
    model = model.to(world.device)
    tok = load_tokenizer(rm_dir)
    data = RMData(conditions=meta["conditions"], default_domain=meta["default_domain"], max_length=meta["max_length"])
    pairs, _ = encode_pairs(files, tok, data, meta["reward_token_id"])
    ev = evaluate(model, pairs, max(batch_tokens, 2 * meta["max_length"]), world, autocast_for(world, precision))
    return {"accuracy": ev["accuracy"], "pairs": len(pairs), "mean_margin": ev["mean_margin"]}
