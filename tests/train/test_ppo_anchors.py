"""What the rounds driver needs from one PPO run: a KL reference other than the actor's start (the SFT model
in every round), critic-only re-warm updates after a reward-model patch, old log-probs recomputed by default
(the first ratio exactly 1 under bf16 autocast), and an optional penalty for responses without a stop token."""

import json
from pathlib import Path

import pytest
import torch

from ilm.config import from_dict
from ilm.train import checkpoint
from ilm.train.rlhf import update as U
from ilm.train.rlhf.ppo import PPOConfig, PPOSection, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models on a shared CPU


def _cfg(setup, corpus, helpers, run_dir, train_over=None, **ppo) -> PPOConfig:
    recipe = helpers.rlhf_recipe(setup, corpus, run_dir, **ppo)
    recipe["train"].update(train_over or {})
    return from_dict(PPOConfig, recipe)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_kl_reference_is_the_given_checkpoint_not_the_actors_start(rlhf, corpus, helpers, tmp_path):
    """Round 2 starts from round 1's actor: with the SFT model as `reference` its KL continues (> 0 at once);
    with the default (the actor's own start) it restarts at exactly 0."""
    sft = str(rlhf["actor"])
    first = train(_cfg(rlhf, corpus, helpers, tmp_path / "r1", {"updates": 3}, critic_warmup_updates=0), resume="never")
    moved = first["export"]["actor"]
    assert first["last"]["kl"] > 0 and first["kl_reference"] == sft and first["last"]["kl_to"] == "actor_start"
    runs = {}
    for name, ref in (("anchored", sft), ("restarted", None)):
        cfg = _cfg(rlhf, corpus, helpers, tmp_path / name, {"updates": 1}, critic_warmup_updates=1)
        cfg.actor, cfg.reference = moved, ref
        s = train(cfg, resume="never")
        runs[name] = {**s["last"], "kl_reference": s["kl_reference"]}
    print(f"round 1 ends at KL {first['last']['kl']:.4f}; round 2's first update: KL to SFT "
          f"{runs['anchored']['kl']:.4f}, KL to its own start {runs['restarted']['kl']:.4f}")
    assert runs["restarted"]["kl"] == 0.0 and runs["restarted"]["kl_reference"] == moved
    assert runs["anchored"]["kl"] > 0.1 * first["last"]["kl"] and runs["anchored"]["kl_reference"] == sft
    assert runs["anchored"]["kl_to"] == "reference"


def test_a_reference_of_another_shape_is_refused_before_any_work(rlhf, corpus, helpers, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for f in Path(rlhf["actor"]).iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    conf = json.loads((other / "config.json").read_text())
    conf["num_hidden_layers"] = conf["num_hidden_layers"] + 1
    (other / "config.json").write_text(json.dumps(conf))
    cfg = _cfg(rlhf, corpus, helpers, tmp_path / "run")
    cfg.reference = str(other)
    with pytest.raises(ValueError, match="another shape than the actor"):
        train(cfg, resume="never")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_critic_rewarm_trains_the_critic_alone_before_the_runs_updates(rlhf, corpus, helpers, tmp_path):
    from ilm.model.hf import load_checkpoint

    run = tmp_path / "run"
    s = train(_cfg(rlhf, corpus, helpers, run, {"updates": 1, "keep_last": 10}, critic_warmup_updates=0,
                   critic_rewarm_updates=2), resume="never")
    rows = _rows(run)
    assert [(r["critic_rewarm"], r["actor_trained"]) for r in rows] == [(True, False), (True, False), (False, True)]
    assert s["updates"] == 3 and "export" in s
    start = {f"actor.{k}": v for k, v in load_checkpoint(rlhf["actor"]).state_dict().items()}
    states = [checkpoint.read_model_tensors(run / f"step-{u:08d}") for u in (1, 2, 3)]
    critic0 = {k: v for k, v in states[0].items() if k.startswith("critic.")}
    for u, state in enumerate(states[:2], 1):
        assert all(torch.equal(state[k], v) for k, v in start.items()), f"actor changed in re-warm update {u}"
    assert not all(torch.equal(states[1][k], v) for k, v in critic0.items())  # the critic trains meanwhile
    assert not all(torch.equal(states[2][k], v) for k, v in start.items())  # then the actor does
    assert PPOSection().critic_rewarm_updates == 0


def test_first_ratio_is_exactly_one_and_kl_zero_with_the_defaults_under_bf16(rlhf, corpus, helpers, tmp_path,
                                                                             monkeypatch):
    seen = []
    real = U.policy_loss

    def spy(logp, old, adv, m, clip):
        seen.append((logp.detach() - old).exp()[m.bool()])
        return real(logp, old, adv, m, clip)

    monkeypatch.setattr(U, "policy_loss", spy)
    results = {}
    for name, over in (("defaults", {}), ("sampling-time log-probs", {"recompute_logprobs": False})):
        seen.clear()
        recipe = helpers.rlhf_recipe(rlhf, corpus, tmp_path / name, critic_warmup_updates=0, **over)
        recipe["train"].update(updates=1)
        del recipe["train"]["precision"]  # the default: bf16 (autocast on CPU)
        cfg = from_dict(PPOConfig, recipe)
        assert cfg.train.precision == "bf16"
        last = train(cfg, resume="never")["last"]
        results[name] = (seen[0], last["kl"])
        print(f"{name}: first mini-batch ratio in [{float(seen[0].min()):.6f}, {float(seen[0].max()):.6f}], "
              f"KL {last['kl']}")
    ratio, kl = results["defaults"]
    assert PPOSection().recompute_logprobs is True
    assert torch.equal(ratio, torch.ones_like(ratio)) and kl == 0.0
    ratio, kl = results["sampling-time log-probs"]  # control: the old default is off by bf16 rounding
    assert not torch.equal(ratio, torch.ones_like(ratio))


def test_missing_eos_penalty_is_added_to_the_reward_of_truncated_responses_only():
    rows = [{"prompt": [1], "response": [5, 6, 7], "old": [-1.0] * 3, "ref": [-1.0] * 3, "values": [0.0] * 3,
             "score": 0.5, "truncated": t} for t in (False, True)]
    off = U.advantages(rows, PPOSection(lam=1.0, whiten_advantages=False))
    on = U.advantages(rows, PPOSection(lam=1.0, whiten_advantages=False, missing_eos_penalty=-2.0))
    assert off["returns"][:, 0].tolist() == [0.5, 0.5]
    assert on["returns"][:, 0].tolist() == [0.5, -1.5]
    assert on["score"].tolist() == [0.5, 0.5]  # the logged RM score stays the reward model's
    assert PPOSection().missing_eos_penalty is None


def test_missing_eos_penalty_must_be_finite_and_fit_fp32_rewards(rlhf, corpus, helpers, tmp_path):
    for bad in (float("nan"), float("inf"), -1e300):
        cfg = _cfg(rlhf, corpus, helpers, tmp_path / "run", missing_eos_penalty=bad)
        with pytest.raises(ValueError, match="missing_eos_penalty must be a finite number of magnitude <= 1e6"):
            train(cfg, resume="never")
