"""The demo's report names the model behind each section (the pretrain/SFT chain or the RLHF task model)
and shows the serve stage's tool-value check with the console's own line."""

from __future__ import annotations

import html
import json

from ilm.report import build_report


def test_report_names_the_model_behind_eval_and_shows_the_tool_value_check(tmp_path):
    run = tmp_path / "run"
    pre, actor, start = run / "pretrain" / "final", run / "rlhf-rounds" / "actor", run / "rlhf-task" / "sft" / "final"
    line = ("tool value: 19/20 final answers state the tool's temperature and city (...) vs 3/20 for its SFT start "
            "and 0.2/20 by chance: works")
    rows = [{"question": "What is the weather in Oslo?", "tool_result": '{"city": "Oslo", "temperature": 37}',
             "answer": "It is 37 degrees in Oslo.", "uses_result": True},
            {"question": "What is the weather in Rome?", "tool_result": '{"city": "Rome", "temperature": 12}',
             "answer": "It is 21 degrees in Rome.", "uses_result": False}]
    report = {"pretrain": {"export": str(pre)}, "rlhf": {"actor": str(actor), "actors": {"1": str(start)}},
              "eval": {"niah": {"chance": 0.01, "model": "the RLHF policy"}},
              "serve": {"checkpoint": str(actor), "tool_values": {"line": line, "policy": {"rows": rows}}}}
    (run / "eval").mkdir(parents=True)
    (run / "serve").mkdir()
    (run / "report.json").write_text(json.dumps(report))
    (run / "eval" / "results.json").write_text(json.dumps({"checkpoint": str(pre), "results": []}))
    cells = [{"length": n, "depth": 0.5, "trial": 0, "hit": n == 128} for n in (128, 256, 512)]
    (run / "eval" / "niah.json").write_text(json.dumps({
        "checkpoint": str(actor), "runs": {"plain": {"cells": cells}}, "summary": {"trained_length": 256}}))
    (run / "serve" / "transcripts.json").write_text(json.dumps([{"kind": "streamed chat", "messages": []}]))
    page = build_report(run).read_text()
    evaluation = page[page.index('id="eval"'):page.index('id="chats"')]
    results, niah = evaluation.split("<h3>Needle in a Haystack</h3>", 1)
    assert "the pretrained model of the pretrain section (the chain)" in results
    assert "the final RLHF policy of the RLHF section (the separate task model, also served)" in niah
    assert "chance 1.000% (2 random digits)" in niah
    chats = page[page.index('id="chats"'):]
    assert html.escape(line) in chats  # the console's line, as it printed it
    assert "It is 21 degrees in Rome." in chats and ">NO<" in chats


def test_report_shows_the_policy_evaluation_the_console_prints(tmp_path):
    """The RLHF section carries the demo's policy evaluation (report.json rlhf.policies): the SFT start and each
    round's actor on the same fresh queries, with the console's numbers."""
    run = tmp_path / "run"
    rollouts = run / "rlhf-rounds" / "round-01" / "ppo" / "rollouts"
    rollouts.mkdir(parents=True)
    rows = [{"update": 1, "row": i, "response": "Trust me! The number is 12." if i else "The number is 40.",
             "rm_score": 0.5, "kl": 0.0, "true_reward": float(i == 0), "messages": [], "query_index": i}
            for i in range(2)]
    (rollouts / "update-000001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    policies = [{"after_round": 0, "queries": 200, "true_reward": 0.385, "loophole_rate": 0.31},
                {"after_round": 1, "queries": 200, "true_reward": 0.715, "loophole_rate": 0.12}]
    (run / "report.json").write_text(json.dumps({"rlhf": {"policies": policies}}))
    page = build_report(run).read_text()
    section = page[page.index('id="rlhf"'):]
    assert "on the same 200 fresh queries" in section
    for cell in ("SFT start", "after round 1", "0.385", "0.715", "0.31", "0.12"):
        assert f"<td>{cell}</td>" in section, cell
