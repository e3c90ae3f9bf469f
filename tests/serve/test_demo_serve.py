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


def test_json_object_results_need_every_string_value_too():
    from ilm.serve.demo import uses_result

    result = json.dumps({"city": "Paris", "temperature": 37})
    assert uses_result("It is 37 degrees in Paris.", result) is True
    assert uses_result("It is 37 degrees in Berlin.", result) is False  # the number, another city
    assert uses_result("It is sunny in Paris.", {"city": "Paris", "weather": "sunny"}) is True
    assert uses_result("It is sunny in Paris.", {"city": "Paris", "weather": "foggy"}) is False
    assert uses_result("It is 10 degrees in Paris.", '{"city": "Paris", "temperature": 1e999}') is False


def test_check_catches_answers_from_memory(taught_ckpt):
    """The tool-value check through the server: the taught model answers "sunny in Paris" whatever the tool
    says, so the case whose tool says "sunny" passes and the one whose tool says "foggy" is caught."""
    from ilm.serve.demo import check_tool_values
    from tests.serve.conftest import WEATHER_TOOL  # what the taught model was taught with

    def says(weather):
        return lambda city: {"city": city, "weather": weather}

    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    check = check_tool_values(taught_ckpt, [(ask, says("sunny")), (ask, says("foggy"))], WEATHER_TOOL)
    assert check["cases"] == 2 and check["calls"] == 2
    assert [r["uses_result"] for r in check["rows"]] == [True, False], check["rows"]
    assert check["used"] == 1 and "foggy" not in check["rows"][1]["answer"]


def test_tool_value_line_prints_the_baselines_and_not_working():
    from ilm.serve.demo import tool_value_line

    def check(used, calls=20):
        return {"cases": 20, "used": used, "calls": calls}

    ok = tool_value_line(check(19), check(12), chance=1 / 90)
    assert ok.startswith("tool value: 19/20 final answers state the tool's temperature and city")
    assert "19/20 calls parsed" not in ok and "20/20 calls parsed" in ok
    assert "vs 12/20 for its SFT start and 0.2/20 by chance: works" in ok
    bad = tool_value_line(check(17), check(0), chance=1 / 90)
    assert bad.endswith("NOT WORKING (below 90%: its final answers do not state the tool's result)")
    assert "NOT WORKING" in tool_value_line(check(0, calls=0), check(0), chance=1 / 90)
