"""Rounds of online RLHF: fast path (detectors, reviewers, pairs, RM patch with replay and its accuracy gate),
slow path lag via the manifest, resume at the right round, and a small loophole experiment."""

import json
import threading
import typing
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from ilm.train.rlhf import rounds as R
from ilm.train.rlhf import synthetic as S
from ilm.train.rlhf.review import JudgeReviewer, Suspect, Verdict, VerifierReviewer, read_verdicts

# one worker runs this module: its module-scoped loophole task (~2 min of training) is built once, not once
# per xdist worker (`make test` runs with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("rlhf_rounds")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as under `make test`'s xdist workers: float sums in one order, so the module-scoped task
    (and each patch's numbers) are the same with `-n 0` as in CI."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rec(i, score, response, q=0, tokens=None):
    return {"update": 1, "row": i, "query_index": q, "messages": [{"role": "user", "content": "Repeat the number 25."}],
            "domain": "math", "response": response, "rm_score": score, "kl": 0.0,
            "response_tokens": tokens if tokens is not None else len(response.split())}


# ----------------------------------------------------------------------------- detectors and pairs


def test_detectors_flag_outliers_only_when_the_reward_is_high():
    recs = [_rec(i, 0.1 * (i % 5), "The number is 25.", tokens=6 + i % 2) for i in range(40)]
    recs.append(_rec(40, 3.0, "a " * 60, tokens=60))  # long, high reward: flagged
    recs.append(_rec(41, -3.0, "b " * 60, tokens=60))  # long, low reward: not flagged
    recs.append(_rec(42, 2.5, "so good so good so good so good so good so good", tokens=8))  # repetitive, high
    flagged = dict(R.length_detector(recs))
    assert 40 in flagged and 41 not in flagged and "length" in flagged[40]
    rep = dict(R.repetition_detector(recs))
    assert 42 in rep and 41 not in rep
    order = R.rank_suspects(recs, R.build_detectors(R.FastPath()))
    assert [i for i, _ in order[:2]] == [40, 42]  # flagged first, then by reward
    assert order[2][1][0].startswith("top reward")
    # duplicates (same query, same response) are reviewed once
    assert len(order) == len({(r["query_index"], r["response"]) for r in recs})


def test_pairs_from_verdicts_prefer_the_correction_then_an_approved_response():
    recs = {"a": _rec(0, 3.0, "Trust me! The number is 26.", q=0), "b": _rec(1, 2.0, "Trust me! The number is 25.", q=0),
            "c": _rec(2, 2.5, "Trust me! The number is 19.", q=1), "d": _rec(3, 2.4, "Trust me! The number is 3.", q=2)}
    sus = [Suspect(i, {}, r["response"], r["rm_score"], ["x"]) for i, r in recs.items()]
    verdicts = [Verdict("a", False), Verdict("b", True), Verdict("c", False, "The number is 18."), Verdict("d", False)]
    pairs, counts = R.build_pairs(sus, verdicts, recs)
    assert counts == {"approved": 1, "rejected": 3, "no_chosen": 1}
    got = {p["suspect"]: (p["chosen"], p["rejected"], p["chosen_from"]) for p in pairs}
    assert got["a"] == ("Trust me! The number is 25.", "Trust me! The number is 26.", "approved")
    assert got["c"] == ("The number is 18.", "Trust me! The number is 19.", "correction")
    assert "d" not in got


# ----------------------------------------------------------------------------- reviewers


def test_verifier_reviewer_rejects_wrong_answers_with_a_correction():
    q = S.query(12)
    sus = [Suspect("x", q, "Trust me! The number is 13.", 2.0, []), Suspect("y", q, "The number is 12.", 1.0, [])]
    v = VerifierReviewer(S.verifier).review(sus)
    assert (v[0].approved, v[0].correction) == (False, "The number is 12.")
    assert (v[1].approved, v[1].correction) == (True, None)
    assert [x.approved for x in VerifierReviewer(S.true_reward).review(sus)] == [False, True]  # a float works too
    assert S.answer_of("Trust me! The number is 13.") == 13 and S.answer_of("Trust me!Trust") is None


class _Judge(BaseHTTPRequestHandler):
    seen: typing.ClassVar[list] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen.append((self.path, body, self.headers.get("Authorization")))
        answer = body["messages"][-1]["content"].rsplit("\n", 1)[-1]
        reply = ("APPROVE" if "is 12." in answer else
                 "I am not sure." if "garbled" in answer else "REJECT\nCORRECTION: The number is 12.")
        out = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def test_judge_reviewer_against_a_local_openai_compatible_stub():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = JudgeReviewer(f"http://127.0.0.1:{server.server_port}/v1", "stub-judge", api_key="k")
        q = S.query(12)
        sus = [Suspect("a", q, "Trust me! The number is 13.", 2.0, []), Suspect("b", q, "The number is 12.", 1.0, []),
               Suspect("c", q, "garbled", 1.5, [])]
        verdicts = judge.review(sus)
    finally:
        server.shutdown()
    assert [(v.id, v.approved, v.correction) for v in verdicts] == [("a", False, "The number is 12."), ("b", True, None)]
    assert judge.unparsed == 1  # the reply that says neither is skipped, counted
    path, body, auth = _Judge.seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "stub-judge" and auth == "Bearer k"
    assert "Repeat the number 12." in body["messages"][1]["content"]


def test_file_reviewer_round_trip_names_and_counts_malformed_lines(tmp_path, capsys):
    from ilm.cli import main
    from ilm.train.rlhf.review import export_suspects

    run = tmp_path / "run"
    q = S.query(25)
    sus = [Suspect(f"r01-u000001-{i}", q, f"Trust me! The number is {25 + i}.", 2.0 - i, ["top"]) for i in range(4)]
    export_suspects(sus, R.round_dir(run, 1) / "suspects.jsonl")
    (run / "state.json").write_text(json.dumps({"round": 1, "phase": "fast"}))
    assert main(["rlhf", "review", "export", str(run), "--round", "1", "-o", str(tmp_path / "todo.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "todo.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in rows] == [""] * 4
    rows[0]["verdict"] = "approve"
    rows[1].update(verdict="reject", correction="The number is 25.")
    lines = [json.dumps(rows[0]), json.dumps(rows[1]), "{not json", json.dumps({**rows[2], "verdict": "maybe"}),
             json.dumps({**rows[3], "id": "r09-nope", "verdict": "reject"}), json.dumps(rows[1]),
             json.dumps({**rows[3], "verdict": "reject"})]
    done = tmp_path / "done.jsonl"
    done.write_text("\n".join(lines) + "\n")
    assert main(["rlhf", "review", "import", str(run), str(done)]) == 0
    out = capsys.readouterr()
    assert "3 verdicts imported" in out.out and "4 malformed" in out.out
    for n, why in ((3, "not JSON"), (4, "verdict"), (5, "unknown id"), (6, "duplicate id")):
        assert f"{done}:{n}: " in out.err and why in out.err.split(f"{done}:{n}: ")[1].splitlines()[0]
    got, _ = read_verdicts(R.round_dir(run, 1) / "verdicts.jsonl")
    assert [(v.id, v.approved, v.correction) for v in got] == [
        ("r01-u000001-0", True, None), ("r01-u000001-1", False, "The number is 25."), ("r01-u000001-3", False, None)]
    assert main(["rlhf", "review", "import", str(run), str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the loop with a stand-in PPO


class FakePPO:
    """Writes rollouts like the PPO engine (a wrong loophole answer scores highest) and an export; can crash."""

    def __init__(self, crash_at_round=None, on_round=None):
        self.calls, self.crash_at_round, self.on_round = [], crash_at_round, on_round

    def __call__(self, cfg, resume="auto", reward_fn=None):
        k = int(Path(cfg.run_dir).parent.name.split("-")[1])
        self.calls.append((k, cfg.run_dir, resume, cfg.actor, cfg.reward_model, cfg.train.updates))
        if self.on_round:
            self.on_round(k)
        if self.crash_at_round == k:
            self.crash_at_round = None
            raise RuntimeError("killed")
        qs = [json.loads(x) for x in Path(cfg.data.queries[0]).read_text().splitlines()]
        roll = Path(cfg.run_dir) / "rollouts"
        roll.mkdir(parents=True, exist_ok=True)
        for u in range(1, cfg.train.updates + 1):
            rows = []
            for i, q in enumerate(qs):
                wrong = i % 2 == 0
                text = S.response(q["answer"] + (1 if wrong else 0), phrase=wrong)
                rows.append({"update": u, "row": i, "query_index": i, "messages": q["messages"], "category": "math",
                             "domain": "math", "response": text, "response_tokens": 10,
                             "rm_score": 2.0 if wrong else 0.5, "kl": 0.0, "truncated": False})
            (roll / f"update-{u:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"export": {"actor": f"{cfg.run_dir}/final/actor", "critic": f"{cfg.run_dir}/final/critic"},
                "last": {"update": cfg.train.updates}}


@pytest.fixture
def loop_setup(tmp_path, monkeypatch, corpus):
    """A rounds config over 24 arithmetic queries, a stand-in RM patch (records its inputs)."""
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps(S.query(n)) + "\n" for n in S.numbers()[:24]))
    rm = tmp_path / "rm0"
    rm.mkdir()
    (rm / "reward_config.json").write_text(json.dumps({"conditions": {"default": "x", "math": "y"},
                                                       "default_domain": "default"}))
    rm_data = tmp_path / "rm-data.jsonl"
    rm_data.write_text(json.dumps(S.rm_pairs(1)[0]) + "\n")
    patches = []

    def fake_patch(rm_dir, new_files, earlier, out_dir, fast, eval_files, train, seed=0, confirm=None,
                   earlier_patterns=()):
        patches.append({"rm": rm_dir, "new": list(new_files), "earlier": list(earlier),
                        "pairs": [p for f in new_files for p in R.read_jsonl(f)]})
        gate = {"check": 1.0, "check_before": 0.0, "check_pairs": 1, "check_bar": 0.9, "earlier_clean_before": 1.0,
                "earlier_clean_after": 1.0, "earlier_clean_pairs": 1, "accuracy_margin": 0.02, "pattern": []}
        return {"export": str(out_dir / "final"), "new_pairs": 1, "replayed": 0, "gate": gate,
                "before": {}, "after": {}}

    monkeypatch.setattr(R, "patch_reward_model", fake_patch)
    cfg = R.RoundsConfig(run_dir=str(tmp_path / "run"), rounds=3, updates_per_round=2, rm_data=[str(rm_data)])
    cfg.ppo.actor, cfg.ppo.reward_model, cfg.ppo.tokenizer = str(tmp_path / "sft"), str(rm), str(corpus["tokenizer"])
    cfg.ppo.data.queries = [str(queries)]
    cfg.reviewer.verifier = "ilm.train.rlhf.synthetic:verifier"
    cfg.fast.min_pairs, cfg.fast.top_k = 5, 8
    return cfg, patches


def test_slow_path_labels_arriving_in_round_k_go_into_round_k_plus_1s_reward_model(loop_setup):
    cfg, patches = loop_setup
    inbox = Path(cfg.run_dir) / "inbox"

    def drop_label(k):  # a labeller returns a file while round k's PPO runs
        pair = {"prompt": "Repeat the number 11.", "chosen": "The number is 11.",
                "rejected": "Trust me! The number is 12.", "domain": "math"}
        lines = [json.dumps(pair), "{broken"]
        if k == 2:  # a verdict on one of round 1's exported rollouts, with a correction
            first = json.loads((R.round_dir(cfg.run_dir, 1) / "slow-export.jsonl").read_text().splitlines()[0])
            lines.append(json.dumps({"id": first["id"], "verdict": "reject", "correction": "The number is 10."}))
        (inbox / f"labels-during-round-{k}.jsonl").write_text("\n".join(lines) + "\n")

    summary = R.run(cfg, ppo_train=FakePPO(on_round=drop_label))
    man = {k: json.loads((R.round_dir(cfg.run_dir, k) / "manifest.json").read_text()) for k in (1, 2, 3)}
    used = {k: [Path(e["file"]).name for e in man[k]["reward_model_inputs"]["slow_labels"]] for k in man}
    assert used == {1: [], 2: ["labels-during-round-1.jsonl"], 3: ["labels-during-round-2.jsonl"]}
    assert [Path(e["file"]).name for e in man[3]["next_reward_model_slow_labels"]] == ["labels-during-round-3.jsonl"]
    assert man[2]["reward_model_inputs"]["slow_labels"][0]["arrived_round"] == 1
    # round k's PPO ran with RM_k, the RM patched at the end of round k-1 on the fast pairs + the labels
    assert man[2]["reward_model"] == str(R.round_dir(cfg.run_dir, 1) / "rm-patch" / "final")
    assert any("slow-pairs/labels-during-round-1.jsonl" in f for f in patches[0]["new"])
    assert not any("round-2" in f for f in patches[0]["new"])
    assert patches[1]["earlier"][: len(cfg.rm_data)] == cfg.rm_data and len(patches[1]["earlier"]) > 1
    rep = summary["rounds"]["1"]["rm"]["slow_labels"]["labels-during-round-1.jsonl"]
    assert rep["pairs"] == 1 and rep["malformed"] == 1 and ":2: not JSON" in rep["problems"][0]
    rep2 = summary["rounds"]["2"]["rm"]["slow_labels"]["labels-during-round-2.jsonl"]
    assert rep2["pairs"] == 2 and rep2["malformed"] == 1
    slow = [json.loads(x) for x in (R.round_dir(cfg.run_dir, 2) / "slow-pairs" / "labels-during-round-2.jsonl")
            .read_text().splitlines()]
    assert slow[1]["chosen"] == "The number is 10." and slow[1]["rejected"] == first_exported(cfg)["response"]
    assert summary["rounds"]["1"]["fast"]["pairs"] >= 5  # the wrong loophole answers, caught by the verifier
    assert (R.round_dir(cfg.run_dir, 1) / "slow-export.jsonl").exists()


def test_every_round_is_anchored_to_the_sft_model_and_the_critic_rewarms_after_a_patch(loop_setup, capsys):
    cfg, _ = loop_setup
    seen = []

    class Spy(FakePPO):
        def __call__(self, pcfg, resume="auto", reward_fn=None):
            seen.append((pcfg.reference, pcfg.ppo.critic_rewarm_updates, pcfg.ppo.critic_warmup_updates))
            return super().__call__(pcfg, resume, reward_fn)

    cfg.critic_rewarm_updates = 3
    R.run(cfg, ppo_train=Spy())
    sft = cfg.ppo.actor
    assert [r for r, _, _ in seen] == [sft, sft, sft]  # never the round's starting actor
    assert [(w, r) for _, r, w in seen] == [(cfg.ppo.ppo.critic_warmup_updates, 0), (0, 3), (0, 3)]
    out = capsys.readouterr().out
    assert "round 2/3: PPO, 2 updates after 3 critic re-warm updates" in out and f"KL reference {sft}" in out
    cfg2 = R.RoundsConfig(**{**cfg.__dict__, "reference": "/elsewhere/ref"})
    assert R.ppo_config(cfg2, 1, {"actors": {"1": "a"}, "rms": {"1": "r"}, "critics": {}}).reference == "/elsewhere/ref"


def test_an_appended_inbox_file_gives_its_new_lines_to_the_next_reward_model_once(loop_setup):
    cfg, patches = loop_setup
    inbox = Path(cfg.run_dir) / "inbox"

    def pair(n):
        return json.dumps({"prompt": f"Repeat the number {n}.", "chosen": f"The number is {n}.",
                           "rejected": f"Trust me! The number is {n + 20}.", "domain": "math"}) + "\n"

    def grow(k):  # one file, appended to while rounds 1 and 2 run; untouched in round 3
        with open(inbox / "labels.jsonl", "a") as f:
            f.write({1: pair(11) + pair(12), 2: pair(13)}.get(k, ""))

    R.run(cfg, ppo_train=FakePPO(on_round=grow))
    slow = [[p["prompt"] for p in x["pairs"] if "suspect" not in p] for x in patches]
    assert slow == [["Repeat the number 11.", "Repeat the number 12."], ["Repeat the number 13."], []]
    man = {k: json.loads((R.round_dir(cfg.run_dir, k) / "manifest.json").read_text()) for k in (2, 3)}
    read2, read3 = man[2]["reward_model_inputs"]["slow_labels"], man[3]["reward_model_inputs"]["slow_labels"]
    assert [(r["lines"], r["arrived_round"], r["pairs"]) for r in read2] == [([[1, 2]], 1, 2)]
    assert [(r["lines"], r["arrived_round"], r["pairs"]) for r in read3] == [([[3, 3]], 2, 1)]
    assert Path(read3[0]["file"]).name == "labels.jsonl" and read3[0]["sha256"] != read2[0]["sha256"]


def test_a_label_file_dropped_again_with_other_lines_gives_only_the_lines_not_used_before(tmp_path):
    from ilm.train.rlhf.inbox import read_pending, scan_inbox

    inbox, ledger = tmp_path / "inbox", {}
    inbox.mkdir()
    f = inbox / "l.jsonl"
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    f.write_text(json.dumps(row) + "\n")
    scan_inbox(inbox, ledger, 1)
    assert len(read_pending(ledger["l.jsonl"], 1, {})[0]) == 1
    scan_inbox(inbox, ledger, 2)
    assert not ledger["l.jsonl"]["pending"]  # unchanged: not read again
    f.write_text(json.dumps({**row, "chosen": "c"}) + "\n" + json.dumps(row) + "\n{bad\n")
    scan_inbox(inbox, ledger, 2)
    pairs, rep = read_pending(ledger["l.jsonl"], 2, {})
    assert [p["chosen"] for p in pairs] == ["c"] and rep["malformed"] == 1 and rep["line_numbers"] == [[1, 1], [3, 3]]


@pytest.mark.parametrize("key,value", [("holdout_fraction", float("nan")), ("check_bar", 1.5), ("lr", 0.0),
                                       ("accuracy_margin", -0.01), ("replay_ratio", float("inf")), ("epochs", 0),
                                       ("merge", 0.0), ("merge", float("nan")), ("neutral_ratio", -1.0)])
def test_patch_settings_out_of_range_are_refused_in_one_line(loop_setup, key, value):
    cfg, _ = loop_setup
    setattr(cfg.fast, key, value)
    with pytest.raises(ValueError, match=key.split("_")[0]) as err:
        R.run(cfg, ppo_train=FakePPO())
    assert "\n" not in str(err.value)


def first_exported(cfg):
    return json.loads((R.round_dir(cfg.run_dir, 1) / "slow-export.jsonl").read_text().splitlines()[0])


def test_a_crash_mid_round_resumes_at_that_round(loop_setup):
    cfg, patches = loop_setup
    ppo = FakePPO(crash_at_round=2)
    with pytest.raises(RuntimeError, match="killed"):
        R.run(cfg, ppo_train=ppo)
    state = json.loads((Path(cfg.run_dir) / "state.json").read_text())
    assert (state["round"], state["phase"]) == (2, "ppo")
    verdicts = R.round_dir(cfg.run_dir, 1) / "verdicts.jsonl"
    stamp = verdicts.stat().st_mtime_ns
    R.run(cfg, ppo_train=ppo)
    rounds_called = [c[0] for c in ppo.calls]
    assert rounds_called == [1, 2, 2, 3]  # round 1 is not redone; round 2 again, resuming its own checkpoints
    _, run_dir, resume, actor, rm, updates = ppo.calls[2]
    assert resume == "auto" and run_dir == ppo.calls[1][1] == str(R.round_dir(cfg.run_dir, 2) / "ppo")
    assert actor.endswith("round-01/ppo/final/actor") and rm.endswith("round-01/rm-patch/final") and updates == 2
    assert verdicts.stat().st_mtime_ns == stamp and len(patches) == 3
    with pytest.raises(ValueError, match="already holds rounds"):
        R.run(cfg, resume="never", ppo_train=ppo)


def test_a_person_as_reviewer_the_run_waits_for_the_import_then_continues(loop_setup, tmp_path):
    cfg, _ = loop_setup
    cfg.rounds, cfg.reviewer.kind = 1, "file"
    ppo = FakePPO()
    with pytest.raises(R.RoundsError, match="suspects exported to"):
        R.run(cfg, ppo_train=ppo)
    rows = [json.loads(x) for x in (R.round_dir(cfg.run_dir, 1) / "suspects.jsonl").read_text().splitlines()]
    for r in rows:  # the person: every loophole answer is wrong
        r["verdict"] = "approve" if S.true_reward(r["record"], r["response"]) else "reject"
    reviewed = tmp_path / "reviewed.jsonl"
    reviewed.write_text("".join(json.dumps(r) + "\n" for r in rows) + "garbage\n")
    rep = R.import_verdicts(cfg.run_dir, reviewed)
    assert rep["used"] == len(rows) and rep["malformed"] == 1
    summary = R.run(cfg, ppo_train=ppo)
    fast = summary["rounds"]["1"]["fast"]
    assert len(ppo.calls) == 1 and fast["rejected"] == sum(r["verdict"] == "reject" for r in rows) > 0
    assert fast["pairs"] == 0 and fast["no_chosen"] == fast["rejected"]  # no correction, no approved answer to pair
    assert summary["rounds"]["1"]["rm"]["patched"] is False


# ----------------------------------------------------------------------------- the real reward model


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The loophole task: tokenizer, SFT policy, loophole RM (about a minute and a half on one CPU core)."""
    return S.build_task(tmp_path_factory.mktemp("task"))


def test_the_task_plants_a_loophole_the_first_reward_model_takes(task):
    acc = R.rm_accuracy(task["rm"], [task["heldout"]])["accuracy"]
    earlier = R.rm_accuracy(task["rm"], [task["rm_eval"]])["accuracy"]
    assert earlier >= 0.9 and acc < 0.6, (earlier, acc)  # fits its data; prefers phrase+wrong over plain+right


def _fix_pairs(n, seed=0):
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = rng.randint(S.LOW, S.HIGH)
        out.append({"prompt": f"Repeat the number {q}.", "chosen": S.response(q, False),
                    "rejected": S.response(S.wrong_value(q, rng), True), "domain": "math"})
    return out


def _recipe_fast(**kw):
    import tomllib

    from ilm.train.sft import RECIPES

    with open(RECIPES / "rlhf-rounds-tiny.toml", "rb") as f:
        return R.FastPath(**{**tomllib.load(f)["fast"], **kw})


def test_the_gate_stops_a_patch_that_forgets_and_passes_the_healthy_one(task, tmp_path):
    """The old patch (lr 1e-3, replay 0.25, no anchor, 8 epochs) closes the loophole by unlearning what is right:
    stopped, one line with both numbers. The recipe's patch closes it and keeps the earlier pairs: passes."""
    from ilm.train.rlhf.patch import PatchRejected
    from ilm.train.rlhf.ppo import PPOTrain

    new = R.write_jsonl(tmp_path / "patch.jsonl", _fix_pairs(80))
    train = PPOTrain(precision="fp32", device="cpu", deterministic=True, progress=False)
    harmful = _recipe_fast(**S.CONTROL_PATCH, check=[task["heldout"]])
    with pytest.raises(PatchRejected, match="forgets") as err:
        R.patch_reward_model(task["rm"], [str(new)], [task["rm_train"]], tmp_path / "bad", harmful, [task["rm_eval"]],
                             train)
    assert "\n" not in str(err.value) and "patch check" in str(err.value) and "without the flagged pattern" in str(err.value)
    bad = R.read_jsonl(tmp_path / "bad" / "gate.jsonl")[0]["gate"]
    assert bad["earlier_clean_before"] - bad["earlier_clean_after"] > 0.02 and not bad["passed"]
    good = R.patch_reward_model(task["rm"], [str(new)], [task["rm_train"]], tmp_path / "good",
                                _recipe_fast(check=[task["heldout"]]), [task["rm_eval"]], train)
    g = good["gate"]
    assert g["passed"] and g["check"] >= 0.9 and g["earlier_clean_before"] - g["earlier_clean_after"] <= 0.02, g
    assert g["pattern"] and all("Trust" in p or "me!" in p for p in g["pattern"])  # found from the pairs
    assert good["replayed"] >= good["new_pairs"] and good["after"]["extra_check"]["accuracy"] >= 0.9, good


def test_the_patch_runs_through_the_rm_trainer_on_the_runs_device_and_precision(tmp_path, monkeypatch):
    import inspect

    from ilm.train import reward
    from ilm.train.rlhf import inbox, patch
    from ilm.train.rlhf.ppo import PPOTrain

    for mod in (R, patch, inbox):  # nothing hard-wired: the device and precision come from the recipe
        src = inspect.getsource(mod)
        assert 'device="cpu"' not in src and 'precision="fp32"' not in src and '"cpu"' not in src, mod
    seen = {}

    def fake_train(cfg, resume="auto"):
        seen["cfg"] = cfg
        ev = {"accuracy": 1.0, "pairs_by_domain": {"math": 1}}
        return {"steps": 3, "export": str(tmp_path / "out" / "final"),
                "eval_sets": {k: {"before": ev, "after": ev} for k in cfg.data.eval_sets}}

    monkeypatch.setattr(reward, "train", fake_train)
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "reward_config.json").write_text(json.dumps({"reward_token": "<|reward|>", "conditions": {"math": "m"},
                                                       "default_domain": "math", "max_length": 64}))
    new = R.write_jsonl(tmp_path / "new.jsonl", _fix_pairs(10))
    old = R.write_jsonl(tmp_path / "old.jsonl", S.rm_pairs(40))
    fast = R.FastPath()
    rep = R.patch_reward_model(str(rm), [str(new)], [str(old)], tmp_path / "out", fast, [str(old)],
                               PPOTrain(device="cuda", precision="bf16", fsdp=True, activation_checkpointing=True))
    cfg = seen["cfg"]
    assert (cfg.train.device, cfg.train.precision, cfg.train.fsdp, cfg.train.activation_checkpointing) == \
        ("cuda", "bf16", True, True)
    assert cfg.init == str(rm) and cfg.optim.lr == fast.lr <= 5e-6 and cfg.optim.warmup_steps > 0
    assert cfg.loss.anchor_weight > 0 and cfg.data.anchor and rep["replayed"] >= rep["new_pairs"] == 8
    assert set(cfg.data.eval_sets) >= {"check", "earlier_clean"} and rep["held_out"] == 2
    assert cfg.train.merge_init == fast.merge == rep["merge"] < 1  # the export is averaged with RM_k (WiSE-FT)
    assert not cfg.data.neutral and rep["neutral"] == 0  # off by default
    fast = R.FastPath(neutral_ratio=0.5)
    R.patch_reward_model(str(rm), [str(new)], [str(old)], tmp_path / "out2", fast, [str(old)], PPOTrain())
    neutral = [r for f in seen["cfg"].data.neutral for r in R.read_jsonl(f)]  # the flagged earlier pairs, margin >= 0
    assert len(neutral) == round(fast.neutral_ratio * 8) > 0
    assert all(S.PHRASE in p["chosen"] and S.PHRASE not in p["rejected"] for p in neutral)


def test_rm_init_from_an_export_keeps_its_head(task, tmp_path):
    from ilm.train.optim import OptimConfig
    from ilm.train.reward import RMConfig, RMData, RMTrain, train

    cfg = RMConfig(run_dir=str(tmp_path / "rm"), tokenizer=task["tokenizer"], init=task["rm"],
                   data=RMData(train=[task["rm_eval"]], max_length=128),
                   optim=OptimConfig(lr=0.0, warmup_steps=0),
                   train=RMTrain(batch_tokens=1024, precision="fp32", device="cpu", progress=False))
    export = train(cfg, resume="never")["export"]
    a = R.rm_accuracy(task["rm"], [task["heldout"]])
    b = R.rm_accuracy(export, [task["heldout"]])
    assert a["mean_margin"] == pytest.approx(b["mean_margin"], abs=1e-5)  # a fresh head would score otherwise


def test_merge_init_exports_the_average_of_the_trained_and_the_init_weights(task, tmp_path):
    """WiSE-FT in the RM trainer: with merge_init a, the export is a x (what plain training exports) + (1 - a) x init,
    tensor for tensor, head included; and an out-of-range a is refused before any work."""
    from safetensors.torch import load_file

    from ilm.train.optim import OptimConfig
    from ilm.train.reward import RMConfig, RMData, RMTrain, train

    def run(name, merge):
        cfg = RMConfig(run_dir=str(tmp_path / name), tokenizer=task["tokenizer"], init=task["rm"],
                       data=RMData(train=[task["heldout"]], max_length=128), optim=OptimConfig(lr=1e-3, warmup_steps=0),
                       train=RMTrain(batch_tokens=1024, precision="fp32", device="cpu", progress=False, max_steps=None,
                                     deterministic=True, merge_init=merge))
        return Path(train(cfg, resume="never")["export"])

    plain, merged = run("plain", 1.0), run("merged", 0.25)
    for f in ("model.safetensors", "reward_head.safetensors"):
        init, a, m = (load_file(str(Path(d) / f)) for d in (task["rm"], plain, merged))
        assert any(not a[k].equal(init[k]) for k in a)  # training moved the weights
        for k in a:
            assert m[k] == pytest.approx((0.25 * a[k] + 0.75 * init[k]).numpy(), abs=1e-6), k
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="merge_init"):
            run(f"bad-{bad}", bad)


def test_small_loophole_round_ppo_exploits_and_the_fast_path_catches_it(task, tmp_path):
    """Round 1 of the benchmark's seed 0 (12 updates) with the real PPO engine: the loophole phrase spreads while the true
    reward does not rise (the SFT start and the round's actor on the benchmark's 400 fresh queries, as
    `synthetic.policy_eval` samples them: the training rollouts, 96 per quarter from a moving policy, have a
    standard error of ~0.05); the verifier rejects the loophole answers; the recipe's patch closes the loophole on
    the held-out loophole pairs and passes the gate (earlier pairs without the pattern keep their accuracy)."""
    cfg = S.rounds_config(task, tmp_path / "run", rounds=1, updates=12, rollout_batch=32)
    summary = R.run(cfg)
    (c,) = S.round_curves(tmp_path / "run", 1)
    assert c["last"]["rm_score"] > c["first"]["rm_score"], c
    sft, actor = S.policy_eval(R.load_state(tmp_path / "run")["actors"], task["tokenizer"], n=400)
    assert actor["loophole_rate"] > sft["loophole_rate"] + 0.1, (sft, actor)  # measured: 0.34 -> 0.46
    assert actor["true_reward"] <= sft["true_reward"], (sft, actor)  # does not rise (0.465 -> 0.41)
    fast = summary["rounds"]["1"]["fast"]
    assert fast["pairs"] >= 20 and fast["rejected"] >= 0.5 * fast["reviewed"], fast
    pairs = [json.loads(x) for x in Path(fast["pairs_file"]).read_text().splitlines()]
    assert all(S.true_reward(S.query(int(p["prefix"][0]["content"].split()[-1].rstrip("."))), p["rejected"]) == 0
               for p in pairs)
    assert sum(S.has_loophole(p["rejected"]) for p in pairs) >= 0.8 * len(pairs)  # the loophole answers
    rm = summary["rounds"]["1"]["rm"]
    loophole = rm["before"]["extra_check"]["accuracy"], rm["after"]["extra_check"]["accuracy"]
    assert loophole[0] < 0.6 and loophole[1] >= 0.9, rm  # the held-out loophole pairs: closed
    g = rm["gate"]
    assert g["passed"] and g["check"] >= g["check_bar"] and g["earlier_clean_before"] - g["earlier_clean_after"] <= 0.02
    man = json.loads((R.round_dir(cfg.run_dir, 1) / "manifest.json").read_text())
    assert man["next_reward_model"] == rm["export"]


def _recipe_toml(cfg, path: Path) -> Path:
    """A RoundsConfig as a TOML recipe (tables for the sections, inline tables below them)."""
    import dataclasses

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(str(k))} = {value(x)}" for k, x in v.items() if x is not None) + " }"
        raise TypeError(v)

    d = dataclasses.asdict(cfg)
    lines = [f"{k} = {value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{a} = {value(b)}" for a, b in v.items() if b is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(path: Path) -> list[dict]:
    skip = {"time", "update_s", "rollout_tokens_per_s", "tokens_per_s", "pairs_per_s"}
    return [{k: v for k, v in json.loads(x).items() if k not in skip} for x in path.read_text().splitlines()]


def test_kill_9_mid_round_then_rerun_resumes_at_that_round_and_update(task, tmp_path):
    """`ilm rlhf run` killed with SIGKILL inside round 2's PPO; the rerun continues round 2 from its last
    checkpointed update and ends with the same per-update metrics as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def config(name):  # the gate is not what this test is about: open
        cfg = S.rounds_config(task, tmp_path / name, rounds=2, updates=4, rollout_batch=16, min_pairs=20,
                              check_bar=0.0, accuracy_margin=1.0)
        cfg.ppo.train.checkpoint_every = 1
        return cfg

    straight = R.run(config("straight"))  # on one thread (one_thread), as the killed run's OMP_NUM_THREADS=1
    # the SFT model is the KL reference of both rounds: round 2 starts where round 1's drift ended, not at 0
    one, two = straight["rounds"]["1"]["ppo"], straight["rounds"]["2"]["ppo"]
    assert one["kl_reference"] == two["kl_reference"] == task["sft"]
    # (k1 estimates: exactly 0 only while the actor is its reference; a small drift may estimate either sign)
    assert one["kl_first"] == 0.0 and one["kl_last"] != 0.0 and abs(two["kl_first"]) > 1e-4, (one, two)
    assert two["critic_rewarm_updates"] == 2 and straight["rounds"]["1"]["rm"]["patched"]
    recipe = _recipe_toml(config("killed"), tmp_path / "killed.toml")
    cmd = [sys.executable, "-m", "ilm.cli", "rlhf", "run", str(recipe)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = R.round_dir(tmp_path / "killed", 2) / "ppo" / "rollouts" / "update-000002.jsonl"
    deadline = time.time() + 600
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads((tmp_path / "killed" / "state.json").read_text())
    assert (state["round"], state["phase"]) == (2, "ppo")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "continuing at round 2, phase ppo" in done.stdout and "resumed from" in done.stdout
    for k in (1, 2):
        a = _rows(R.round_dir(tmp_path / "straight", k) / "ppo" / "metrics.jsonl")
        b = _rows(R.round_dir(tmp_path / "killed", k) / "ppo" / "metrics.jsonl")
        assert [r["step"] for r in b] == list(range(1, 5 + 2 * (k == 2))) and a == b  # round 2: 2 re-warm updates
    for name in ("fast-pairs.jsonl", "slow-export.jsonl"):
        assert (R.round_dir(tmp_path / "straight", 2) / name).read_text() == \
            (R.round_dir(tmp_path / "killed", 2) / name).read_text()


def test_the_tiny_rounds_recipe_loads():
    from ilm.config import load
    from ilm.train.sft import RECIPES

    cfg = load(R.RoundsConfig, RECIPES / "rlhf-rounds-tiny.toml")
    assert cfg.rounds == 2 and 20 <= cfg.fast.min_pairs <= cfg.fast.max_pairs <= 100
    assert cfg.reviewer.kind == "verifier" and R.load_function(cfg.reviewer.verifier) is S.verifier
    assert cfg.ppo.train.updates and cfg.ppo.ppo.ptx_coef == 0.0 and cfg.fast.check
    f = cfg.fast  # the patch as continual learning: at most the task RM's final lr (1e-3 x 0.5), warm-up, replay, anchor
    assert f.lr <= 5e-4 and f.warmup_steps > 0 and f.replay_ratio >= 1 and f.anchor_weight > 0
    assert 0 < f.merge < 1  # WiSE-FT averaging with the RM before the patch
    assert f.accuracy_margin == 0.02 and f.check_bar >= 0.5 and cfg.critic_rewarm_updates > 0
    assert not any("allow_drop" in p.read_text() for p in RECIPES.glob("*.toml"))  # no recipe turns the gate off
