"""The PPO engine (ilm rlhf ppo): rollouts equal a no-cache sampling loop, log-probs recompute exactly, the
critic warm-up leaves the actor untouched, ptx holds the pretraining loss, kill -9 + rerun is exact, bad
input is counted, and a tokenizer mismatch is refused before any work."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ilm.config import from_dict
from ilm.train import checkpoint
from ilm.train.rlhf.ppo import PPOConfig, train

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models on a shared CPU


@pytest.fixture
def setup(rlhf):
    return rlhf


def _cfg(setup, corpus, helpers, run_dir, train_over=None, **ppo) -> PPOConfig:
    recipe = helpers.rlhf_recipe(setup, corpus, run_dir, **ppo)
    recipe["train"].update(train_over or {})
    return from_dict(PPOConfig, recipe)


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "update_s", "rollout_tokens_per_s")} for r in rows]


def test_critic_warmup_leaves_the_actor_bit_identical_while_the_value_loss_falls(setup, corpus, helpers, tmp_path):
    from ilm.model.hf import load_checkpoint

    run = tmp_path / "run"
    n = 5
    train(_cfg(setup, corpus, helpers, run, {"updates": n, "keep_last": 10}, critic_warmup_updates=n), resume="never")
    start = {f"actor.{k}": v for k, v in load_checkpoint(setup["actor"]).state_dict().items()}
    for u in range(1, n + 1):
        state = checkpoint.read_model_tensors(run / f"step-{u:08d}")
        assert all(torch.equal(state[k], v) for k, v in start.items()), f"actor changed during warm-up update {u}"
    rows = _metrics(run)
    losses = [r["value_loss"] for r in rows]
    print(f"value loss over the {n} warm-up updates: {[round(x, 3) for x in losses]}")
    assert losses[-1] < 0.5 * losses[0]
    assert not any(r["actor_trained"] for r in rows) and all(r["ptx_loss"] is None for r in rows)
    # control: the first update after the warm-up does change the actor (so the check above can fail)
    train(_cfg(setup, corpus, helpers, run, {"updates": n + 1}, critic_warmup_updates=n), resume="auto")
    state = checkpoint.read_model_tensors(run / f"step-{n + 1:08d}")
    assert not all(torch.equal(state[k], v) for k, v in start.items())


def test_ptx_keeps_the_held_out_pretraining_loss(setup, corpus, helpers, tmp_path):
    """6 updates from the pretrained tiny actor, with and without ptx, on three seeds: one run's drift is as much
    the draw as ptx (measured per seed, ptx 0.5 / none: +0.11 / +0.21, -0.01 / +0.09, +0.13 / +0.07), so the
    stated margin is on the mean: within 0.1 nats of the start, and below the mean drift without ptx."""
    drift: dict[float, list[float]] = {0.5: [], 0.0: []}
    for seed in (0, 1, 2):
        for coef, runs in drift.items():
            recipe = helpers.rlhf_recipe(setup, corpus, tmp_path / f"seed{seed}-ptx{coef}", ptx_coef=coef,
                                         critic_warmup_updates=0)
            recipe["train"].update(updates=6, seed=seed)
            s = train(from_dict(PPOConfig, recipe), resume="never")
            runs.append(s["last"]["ptx_eval_loss"] - s["ptx_eval_loss_start"])
    mean = {coef: sum(d) / len(d) for coef, d in drift.items()}
    print(f"held-out pretraining loss drift over 6 updates, seeds 0-2: {drift}; means {mean}")
    assert mean[0.5] <= 0.1 and mean[0.5] < mean[0.0], drift


def _cli(recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ilm.cli", "rlhf", "ppo", str(recipe), *extra]


def _env() -> dict:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def test_kill9_then_rerun_gives_the_same_updates(setup, corpus, helpers, tmp_path):
    from ilm.train import checkpoint

    runs = {}
    for name in ("straight", "killed"):
        recipe = helpers.rlhf_recipe(setup, corpus, tmp_path / name)
        recipe["train"].update(updates=6, checkpoint_every=2)
        runs[name] = helpers.write_recipe(tmp_path / f"{name}.toml", recipe)
    subprocess.run(_cli(runs["straight"]), check=True, env=_env(), capture_output=True)
    proc = subprocess.Popen(_cli(runs["killed"]), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill -9 once update 3 is logged: past the update-2 checkpoint
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(metrics.read_text().splitlines())
    assert 3 <= done_before < 6, done_before
    print(f"killed after {done_before} updates; latest checkpoint {checkpoint.latest(tmp_path / 'killed').name}")
    out = subprocess.run(_cli(runs["killed"]), env=_env(), capture_output=True, text=True, check=True)
    assert "resumed from" in out.stdout
    assert _metrics(tmp_path / "killed") == _metrics(tmp_path / "straight")  # exactly, every update
    for u in range(1, 7):
        name = f"rollouts/update-{u:06d}.jsonl"
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "straight" / name).read_text()


def test_bad_queries_counted_and_truncated_responses_flagged(setup, corpus, helpers, tmp_path):
    lines = [json.dumps({"messages": [{"role": "user", "content": "seven green tables"}], "category": "math"}),
             json.dumps({"messages": [{"role": "user", "content": "north river"}], "category": "poetry"}),
             json.dumps({"messages": [{"role": "user", "content": "cloud music"}]}),  # no category
             json.dumps({"messages": [{"role": "user", "content": "   "}], "category": "chat"}),  # empty
             json.dumps({"messages": [{"role": "user", "content": "stone " * 200}], "category": "chat"}),  # too long
             json.dumps({"prompt": "no messages"}), "{not json"]
    queries = tmp_path / "bad.jsonl"
    queries.write_text("\n".join(lines) + "\n")
    recipe = helpers.rlhf_recipe(setup, corpus, tmp_path / "run", rollout_batch=6, generation_batch=3,
                                 mini_batches=1, micro_batch_rows=3, max_new_tokens=3)
    recipe["data"]["queries"] = [str(queries)]
    recipe["train"]["updates"] = 1
    s = train(from_dict(PPOConfig, recipe), resume="never")
    d = s["data"]
    assert d["queries"] == 7 and d["kept"] == 3
    assert d["skipped"] == {"invalid_json": 1, "bad_record": 1, "empty": 1, "too_long": 1}
    assert d["unknown_category"] == 2 and d["unknown_categories"] == {"poetry": 1, "None": 1}
    rows = [json.loads(x) for x in (tmp_path / "run" / "rollouts" / "update-000001.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        assert r["domain"] == ("math" if r["category"] == "math" else "default")
        assert isinstance(r["rm_score"], float) and abs(r["rm_score"]) < 1e6
        if r["truncated"]:
            assert r["response_tokens"] == 3  # ran out of max_new_tokens without <|im_end|>: scored, flagged
    assert any(r["truncated"] for r in rows)
    assert s["last"]["unknown_category"] == sum(r["category"] != "math" for r in rows)
    assert s["last"]["truncated_fraction"] == sum(r["truncated"] for r in rows) / 6


def test_reward_model_on_another_tokenizer_is_refused_before_any_work(setup, corpus, tmp_path, helpers):
    import shutil

    from ilm.tokenizer import train_tokenizer

    (tmp_path / "other.txt").write_text("\n".join(f"line {i} of some other text, {i * 7} words" for i in range(300)))
    train_tokenizer([tmp_path / "other.txt"], tmp_path / "other_tok", vocab_size=512)
    rm = tmp_path / "rm_other"
    shutil.copytree(setup["rm"], rm)
    shutil.copy(tmp_path / "other_tok" / "tokenizer.json", rm / "tokenizer.json")
    recipe = helpers.rlhf_recipe(setup, corpus, tmp_path / "run")
    recipe["reward_model"] = str(rm)
    out = subprocess.run(_cli(helpers.write_recipe(tmp_path / "r.toml", recipe)), env=_env(), capture_output=True, check=False,
                         text=True)
    print(out.stderr.strip())
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: the reward model at") and "different tokenizer" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    # no work done: at most the resolved recipe is recorded (`config.toml`), no checkpoint, metrics or rollouts
    written = sorted(p.name for p in (tmp_path / "run").iterdir()) if (tmp_path / "run").exists() else []
    assert written in ([], ["config.toml"]), written


def test_two_process_fsdp_and_ddp_updates_match_single_process(setup, corpus, helpers, tmp_path):
    """Each rank rolls out half the queries; the token-weighted loss over both ranks gives the one-process
    update, with the models sharded (FSDP2) and with them whole on each rank (DDP, train.fsdp = false)."""
    from ilm.model.hf import load_checkpoint

    torchrun = str(Path(sys.executable).with_name("torchrun"))
    states, metrics = {}, {}
    for name, nproc, fsdp in (("p1", 1, True), ("fsdp", 2, True), ("ddp", 2, False)):
        recipe = helpers.rlhf_recipe(setup, corpus, tmp_path / name)
        recipe["train"].update(updates=2, fsdp=fsdp)
        path = helpers.write_recipe(tmp_path / f"{name}.toml", recipe)
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "ilm.cli", "rlhf", "ppo", str(path)]
        done = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        states[name] = checkpoint.read_model_tensors(tmp_path / name / "step-00000002")
        metrics[name] = _metrics(tmp_path / name)
    start = {f"actor.{k}": v for k, v in load_checkpoint(setup["actor"]).state_dict().items()}
    moved = max((states["p1"][k] - v).abs().max().item() for k, v in start.items())
    assert moved > 1e-4
    for name in ("fsdp", "ddp"):
        one, two = metrics["p1"], metrics[name]
        assert [r["rollout_tokens"] for r in one] == [r["rollout_tokens"] for r in two]  # the same rollouts
        worst = max((states["p1"][k].float() - states[name][k].float()).abs().max().item() for k in states["p1"])
        print(f"{name}: max |1 process - 2 processes| weight after 2 updates: {worst:.2e} (the actor moved {moved:.2e})")
        # Not exact, and not from thread counts (1 and 2 threads give identical weights): two ranks sum each
        # gradient in another order than one process, and AdamW's step lr * m / (sqrt(v) + eps) turns that
        # last-bit difference into a step difference of up to lr * dg / (|g| + eps), which is large only
        # where a coordinate's gradient is itself near zero -- so the gap depends on the data, the seed and
        # the package versions. Measured (2026-12-07, FSDP and DDP, actors from seeds 0, 1, 2): 3.1e-6 to
        # 7.9e-6; 2.6e-5 on a fresh clone; every one <= 1.3% of how far the actor moved (2 x lr = 2e-3;
        # with eps 1e-6 instead of 1e-8 the gap shrinks to 0.5e-6..1e-6, which confirms the mechanism). A
        # broken reduction (a rank's rows dropped, rows counted twice) turns gradient signs and moves
        # weights by O(lr), tens of % of the move: 5% of the move separates the two with margin both sides.
        assert worst <= 0.05 * moved
        for a, b in zip(one, two):
            assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-5)
            assert a["value_loss"] == pytest.approx(b["value_loss"], rel=1e-4)


def test_true_reward_hook_exports_and_a_critic_from_the_export(setup, corpus, helpers, tmp_path):
    from ilm.model.hf import load_checkpoint
    from ilm.train.reward_model import load_reward_model

    seen = []

    def true_reward(record: dict, text: str) -> float:
        seen.append(record["category"])
        return float(len(text))

    cfg = _cfg(setup, corpus, helpers, tmp_path / "a", {"updates": 2}, recompute_logprobs=True)
    s = train(cfg, resume="never", reward_fn=true_reward)
    rows = [json.loads(x) for x in (tmp_path / "a" / "rollouts" / "update-000002.jsonl").read_text().splitlines()]
    assert [r["true_reward"] for r in rows] == [float(len(r["response"])) for r in rows]
    assert s["last"]["true_reward"] == pytest.approx(sum(r["true_reward"] for r in rows) / len(rows))
    assert len(seen) == 8 and set(seen) <= {"math", "chat"}
    actor = load_checkpoint(s["export"]["actor"])
    critic, meta = load_reward_model(s["export"]["critic"])
    state = checkpoint.read_model_tensors(tmp_path / "a" / "step-00000002")
    assert torch.equal(actor.output.weight, state["actor.output.weight"])
    assert torch.equal(critic.v_head.weight, state["critic.v_head.weight"])
    assert meta["conditions"] == json.loads((setup["rm"] / "reward_config.json").read_text())["conditions"]
    # a later run (the next round) can start its critic from this export
    cfg2 = _cfg(setup, corpus, helpers, tmp_path / "b", {"updates": 1})
    cfg2.critic, cfg2.optim.critic_lr = s["export"]["critic"], 0.0  # lr 0: the critic stays as loaded
    train(cfg2, resume="never")
    state2 = checkpoint.read_model_tensors(tmp_path / "b" / "step-00000001")
    assert all(torch.equal(state2[k], v) for k, v in state.items() if k.startswith("critic."))


def test_no_process_holds_a_whole_parameter_while_the_four_models_load(setup, corpus, helpers, tmp_path):
    """2 processes: actor, reference, critic and reward model are sharded before their weights are read; the
    largest tensor a process holds until the optimiser exists is a shard, and the weights assemble exactly."""
    recipe = helpers.rlhf_recipe(setup, corpus, tmp_path / "run")
    (tmp_path / "ppo.json").write_text(json.dumps(recipe))
    probe = Path(__file__).with_name("rank_probe.py")
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", str(probe),
           "ppo", str(tmp_path), str(tmp_path / "ppo.json")]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    whole = 512 * 64 * 4  # bytes of the largest parameter (embedding / output head, fp32)
    for rank in (0, 1):
        found = json.loads((tmp_path / f"setup-rank{rank}.json").read_text())["ppo"]
        print(f"rank {rank}: largest tensor held during setup {found['largest_bytes']} bytes "
              f"({found['largest_op']}); a whole parameter is {whole}")
        assert 0 < found["largest_bytes"] < whole, (rank, found)
        assert found["same_names"] and found["max_diff"] == 0.0, (rank, found)
