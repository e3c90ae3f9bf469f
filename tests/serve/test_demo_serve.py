"""`ilm.serve.demo.run`: the demo's serving stage writes its transcripts and reports honestly."""

from __future__ import annotations

import json

from ilm.serve.demo import python_doc, run


def test_demo_run_writes_transcripts(tmp_path, taught_ckpt):
    summary = run(tmp_path, taught_ckpt, quick=True)
    transcripts = json.loads((tmp_path / "serve" / "transcripts.json").read_text())
    assert summary["requests"] == len(transcripts) in (2, 3)
    assert transcripts[0]["kind"] == "streamed chat" and transcripts[0]["usage"]["completion_tokens"] >= 1
    assert summary["completion_tokens"] == sum(t["usage"]["completion_tokens"] for t in transcripts)
    call = transcripts[1]
    assert call["kind"] == "tool call" and call["messages"][-1]["role"] == "user"
    assert summary["tool_call_parsed"] == bool(call["tool_calls"])
    if summary["tool_call_parsed"]:  # the round trip carried the call and its environment result back
        follow = transcripts[2]["messages"]
        assert follow[-2]["tool_calls"] == call["tool_calls"] and follow[-1]["role"] == "tool"
    else:
        assert "note" in call and summary["final_answer"] is None and summary["answer_uses_tool_result"] is None


def test_python_doc_tool():
    assert python_doc("textwrap.dedent").startswith("Remove any common leading whitespace")
    assert python_doc("nope.nothing").startswith("error:")


def test_the_answer_is_checked_against_the_tool_result():
    from ilm.serve.demo import uses_result

    result = {"city": "Paris", "temperature": 7}
    assert uses_result("It is 7 degrees in Paris.", result) is True
    assert uses_result("It is 87 degrees in Paris.", result) is False  # the case: a number of its own
    assert uses_result("It is 7 or 67 degrees.", result) is False
    assert uses_result("Remove any common leading whitespace.", "Remove any common leading whitespace from") is True
    assert uses_result("No idea.", "Remove any common leading whitespace") is False
    assert uses_result(None, result) is None and uses_result("text", None) is None
