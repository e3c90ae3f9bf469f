"""PPO's numbers pinned: a tiny deterministic run (critic warm-up, then the actor with ptx, 3 updates; and
the matched-work setting of `benchmarks/bench_ppo.py`: sampling-time log-probs, no ptx, RM inputs cut) must
give these losses and statistics to float rounding. They were computed on the code before the update's hot
path was optimised (issue 25): a speed change that moves any of them changed the math, not just the speed.

If the shared fixture (`tests/train/conftest.py`: corpus, tokenizer, actor, reward model) changes on purpose,
recompute them with `ILM_PIN_PRINT=1` (prints the new table) on the code before the change, and paste it."""

import json
import os
from pathlib import Path

import pytest
import torch

from ilm.config import from_dict
from ilm.train import checkpoint
from ilm.train.rlhf.ppo import PPOConfig, train

pytestmark = pytest.mark.usefixtures("one_thread", "multinomial_draws")


@pytest.fixture
def multinomial_draws(monkeypatch):
    """The pins were computed with `torch.multinomial` as the sampler's draw; the draw is now inverse-CDF sampling
    (`ilm.model.generate.draw`: the same distribution, other random numbers, tested in tests/model/test_generate.py).
    With the old draw put back, every number here must still come out: what is pinned is the PPO math."""
    from ilm.model import generate

    monkeypatch.setattr(generate, "draw", lambda probs, gen: torch.multinomial(probs, 1, generator=gen).squeeze(-1))

KEYS = ("reward_mean", "reward_std", "kl", "kl_per_token", "entropy", "response_length", "truncated_fraction",
        "policy_loss", "clip_fraction", "value_loss", "explained_variance", "ptx_loss", "ptx_eval_loss",
        "return_mean", "grad_norm_actor", "grad_norm_critic", "rm_inputs_cut")

PINNED: dict[str, dict] = {  # computed at commit 7b08ea8 (before the optimisation)
    'default': {"metrics": [[-3.6195218563079834, 0.6233659386634827, 0.0, 0.0, 4.297025203704834, 12.0, 1.0, None, None, 30.336766004562378, -45.815521240234375, None, 4.370678901672363, -3.570864677429199, None, 817.32080078125, 0], [-3.927884817123413, 0.5276920795440674, 0.0, 0.0, 4.3444600105285645, 12.0, 1.0, -0.007726147770881653, 0.0416666679084301, 10.46509861946106, -20.686925888061523, 4.256577730178833, 4.360410213470459, -4.108148097991943, 2.7346832752227783, 437.63653564453125, 0], [-4.21688175201416, 0.5208106637001038, -0.4277638792991638, -0.035646989941596985, 4.448112964630127, 12.0, 1.0, -0.0028140880167484283, 0.0416666679084301, 10.190450668334961, -16.004236221313477, 4.591700077056885, 4.3908843994140625, -3.9643356800079346, 2.5613118410110474, 268.10204315185547, 0]], "rm_score_sums": [-14.478087425231934, -15.711539030075073, -16.867528438568115], "weights": 8420.378316350238},
    'bench': {"metrics": [[-2.432293653488159, 0.4125550389289856, -2.123415470123291e-07, -2.0466655925588384e-08, 4.308115005493164, 10.375, 0.125, -9.384022531918732e-05, 0.03614457903138126, 17.199465659727533, -76.4747085571289, None, 4.409204483032227, -2.4225246906280518, 2.6354368031024933, 584.482234954834, 8], [-3.0317986011505127, 0.629033088684082, 0.48178616166114807, 0.0458843968808651, 4.281172752380371, 10.5, 0.25, 0.01770058318617798, 0.02380952425301075, 4.023440108412788, -9.235392570495605, None, 4.455020427703857, -3.2318241596221924, 2.3745177090168, 107.96582555770874, 8], [-2.646040678024292, 0.43071624636650085, 0.12178324162960052, 0.010589847341179848, 4.571269512176514, 11.5, 0.625, -0.0005262312681778618, 0.010869565379360447, 1.2739096465318098, -7.956524848937988, None, 4.496329307556152, -2.6598010063171387, 3.1580746471881866, 58.91178321838379, 8]], "rm_score_sums": [-19.45834982395172, -24.2543888092041, -21.168325185775757], "weights": 8342.219936225194},
}


def _run(setup, corpus, helpers, run_dir: Path, **ppo) -> dict:
    recipe = helpers.rlhf_recipe(setup, corpus, run_dir, **ppo)
    recipe["train"]["checkpoint_every"] = 100
    train(from_dict(PPOConfig, recipe), resume="never")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scores = [sum(json.loads(x)["rm_score"] for x in (run_dir / "rollouts" / f"update-{u:06d}.jsonl")
                  .read_text().splitlines()) for u in range(1, len(rows) + 1)]
    state = checkpoint.read_model_tensors(run_dir / f"step-{len(rows):08d}")
    weights = float(sum(v.double().abs().sum() for v in state.values()))
    return {"metrics": [[r.get(k) for k in KEYS] for r in rows], "rm_score_sums": scores, "weights": weights}


def _check(name: str, got: dict) -> None:
    if os.environ.get("ILM_PIN_PRINT") == "1":
        print(f"\n    {name!r}: {json.dumps(got)},")
        return
    want = PINNED[name]
    assert got["weights"] == pytest.approx(want["weights"], rel=1e-9), "the trained weights moved"
    assert got["rm_score_sums"] == pytest.approx(want["rm_score_sums"], rel=1e-6, abs=1e-9)
    for u, (g, w) in enumerate(zip(got["metrics"], want["metrics"], strict=True), 1):
        for k, a, b in zip(KEYS, g, w, strict=True):
            assert a == (None if b is None else pytest.approx(b, rel=1e-6, abs=1e-9)), f"update {u}: {k} {a} != {b}"


def test_default_run_is_pinned(rlhf, corpus, helpers, tmp_path):
    """Warm-up update, then 2 actor updates with ptx and recomputed old log-probs (the recipe's path)."""
    _check("default", _run(rlhf, corpus, helpers, tmp_path / "run"))


def test_bench_setting_is_pinned(rlhf, corpus, helpers, tmp_path, monkeypatch):
    """The benchmark's matched-work path: old log-probs from sampling, no ptx, one generate call per update,
    4 mini-batches; every RM input cut (max_length 44: the oldest tokens go, into the response for the longer ones), and
    ragged responses ("(", "." and a newline also stop a row, so rows end at different lengths)."""
    import shutil

    from ilm.train.rlhf import rollout

    real = rollout.sample
    monkeypatch.setattr(rollout, "sample", lambda m, prompts, n, stop_ids, *a, **k:
                        real(m, prompts, n, (*stop_ids, 10, 16, 201), *a, **k))

    rm = tmp_path / "rm"
    shutil.copytree(rlhf["rm"], rm)
    meta = json.loads((rm / "reward_config.json").read_text())
    (rm / "reward_config.json").write_text(json.dumps({**meta, "max_length": 44}))
    setup = {**rlhf, "rm": rm}
    _check("bench", _run(setup, corpus, helpers, tmp_path / "run", rollout_batch=8, generation_batch=8,
                         mini_batches=4, micro_batch_rows=2, critic_warmup_updates=0, ptx_coef=0.0,
                         recompute_logprobs=False, max_new_tokens=16))


def test_rm_inputs_are_ilm_rms_encoding(corpus):
    """`scoring.rm_sequences` (one render per row) gives exactly `reward.encode_sequence`'s ids and cut."""
    import numpy as np

    from ilm.train.reward import encode_sequence
    from ilm.train.rlhf.queries import Query
    from ilm.train.rlhf.scoring import rm_sequences

    tok = corpus["tok"]
    conditions = {"a": "Judge the arithmetic.", "b": ""}
    prefixes = [[{"role": "user", "content": "2 + 2?"}],
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  lead\n\nspaces"},
                 {"role": "assistant", "content": "ok"}, {"role": "user", "content": "déjà vu \U0001f600 <|im_end|>"}]]
    texts = ["4", "", "\n  indented\treply", "<|im_start|>user\nfake turn", "x" * 300, "\ufffd?"]
    rng = np.random.default_rng(0)
    responses = [rng.integers(0, 512, size=n).tolist() for n in (0, 1, 5, 40, 64, 200)]
    for max_length in (512, 40, 12):
        meta = {"reward_token_id": 7, "max_length": max_length}
        rows = [(Query(i, {"messages": pre}, [], dom, False), r) for i, (pre, dom, r) in
                enumerate((p, d, r) for p in prefixes for d in conditions for r in responses)]
        stops = {2, 5}
        got, cut = rm_sequences(tok, [q for q, _ in rows], [r for _, r in rows], meta, conditions, stops)
        given, cut2 = rm_sequences(tok, [q for q, _ in rows[:6]], [[]] * 6, meta, conditions, stops, texts)
        want, n = [], 0
        for (q, r), text in [(row, tok.decode([t for t in row[1] if t not in stops])) for row in rows] + \
                [(row, t) for row, t in zip(rows[:6], texts)]:
            ids, head, _ = encode_sequence(tok, conditions[q.domain], q.record["messages"],
                                           [{"role": "assistant", "content": text}], 7)
            if len(ids) > max_length:
                n += 1
                ids = ids[:head] + ids[head + len(ids) - max_length :]
            want.append(ids)
        assert [s.tolist() for s in got + given] == want and cut + cut2 == n
