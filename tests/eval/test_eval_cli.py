"""`ilm eval run|list|lm-eval` on local task files, the pieces it is made of, its bad-input errors and the demo
step."""

import json
import shutil

import pytest

from ilm.cli import main
from ilm.eval.lm import rolling_windows


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 16, 17, 30])
def test_rolling_windows_are_lm_eval_s(n):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = list(range(100, 100 + n))
    theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, prefix_token=1, max_seq_len=8,
                                                                          context_len=1)]
    ours = rolling_windows(tokens, 1, 8)
    assert ours == [tuple(w) for w in theirs]
    assert [t for _, pred in ours for t in pred] == tokens  # every token predicted once
    assert all(len(c) + len(p) <= 9 for c, p in ours)


def test_mmlu_and_ceval_jsonl_files_run_and_report_opencompass_names(tiny_llama, tmp_path, capsys):
    rows = [{"question": f"Which number is {i}?", "choices": [str(i), str(i + 1), str(i + 2), str(i + 3)],
             "answer": "ABCD"[i % 4]} for i in range(6)]
    mmlu = tmp_path / "mmlu_numbers.jsonl"
    mmlu.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mmlu_numbers.dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    ceval = tmp_path / "ceval_numbers.jsonl"
    ceval.write_text("".join(json.dumps({"question": "一加一等于几？", "A": "1", "B": "2", "C": "3", "D": "4",
                                         "answer": "B"}) + "\n" for _ in range(2)))
    out = tmp_path / "res" / "results.json"
    assert main(["eval", "run", "--checkpoint", str(tiny_llama), "--tasks", str(mmlu), str(ceval),
                 "--num-fewshot", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lukaemon_mmlu_numbers" in printed and "ceval-numbers" in printed
    res = json.loads(out.read_text())
    assert [r["samples_n"] for r in res["results"]] == [6, 2]
    mmlu_res = res["results"][0]
    assert [s["target"] for s in mmlu_res["samples"]] == [0, 1, 2, 3, 0, 1]  # letters -> indices
    assert mmlu_res["samples"][0]["arguments"][0][0].count("Answer:") == 3  # 2 shots from the .dev file
    preds = [max(range(4), key=lambda j: s["loglikelihoods"][j]) for s in mmlu_res["samples"]]
    assert mmlu_res["metrics"]["acc"] == sum(p == s["target"] for p, s in zip(preds, mmlu_res["samples"])) / 6


def test_list_names_the_shipped_tasks(capsys):
    assert main(["eval", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("ilm_stdlib_mc", "ilm_stdlib_arith", "ilm_license_ppl"):
        assert name in out


@pytest.mark.parametrize("first", ["{not json", "[1]"])
def test_a_malformed_first_line_is_counted_too(tiny_llama, tmp_path, capsys, first):
    bad = tmp_path / "gsm8k_first.jsonl"
    bad.write_text(first + '\n{"question": "1+1?", "answer": "#### 2"}\n\n{"oops"\n')
    assert main(["eval", "run", "--checkpoint", str(tiny_llama), "--tasks", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "2 bad line(s) of 3" in err
    assert "line 1: not" in err and "line 4: not JSON" in err


def test_malformed_task_lines_are_named_and_counted(tiny_llama, tmp_path, capsys):
    bad = tmp_path / "gsm8k_bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{not json\n{"question": "2+2?"}\n'
                   '{"question": "3+3?", "answer": "#### 6"}\n[1, 2]\n')
    assert main(["eval", "run", "--checkpoint", str(tiny_llama), "--tasks", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(bad) in err and "3 bad line(s) of 5" in err
    assert "line 2: not JSON" in err and "line 3: missing field 'answer'" in err and "line 5" in err


def test_checkpoint_without_tokenizer_is_one_line(tiny_llama, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama / name, bare / name)
    assert main(["eval", "run", "--checkpoint", str(bare), "--tasks", "ilm_stdlib_mc", "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no tokenizer" in err and len(err.splitlines()) == 1


def test_unknown_task_and_bad_yaml_are_one_line(tmp_path, capsys):
    assert main(["eval", "run", "--checkpoint", str(tmp_path), "--tasks", "no_such_task"]) == 2
    assert "unknown task 'no_such_task'" in capsys.readouterr().err
    y = tmp_path / "t.yaml"
    y.write_text("task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(tmp_path / "d.jsonl")
                 + "\noutput_type: multiple_choice\n")
    (tmp_path / "d.jsonl").write_text('{"a": 1}\n{"a": \n')
    assert main(["eval", "run", "--checkpoint", str(tmp_path), "--tasks", str(y)]) == 2
    err = capsys.readouterr().err.strip()
    assert "d.jsonl: 1 bad line(s) of 2: line 2: not JSON" in err and len(err.splitlines()) == 1
    y.write_text("task: [unclosed\n")
    assert main(["eval", "run", "--checkpoint", str(tmp_path), "--tasks", str(y)]) == 2
    assert "cannot read the task YAML" in capsys.readouterr().err
    assert main(["eval", "run", "--checkpoint", str(tmp_path), "--tasks", "ilm_stdlib_mc",
                 "--data", "ilm_stdlib_mc:test"]) == 2
    assert "expected TASK:SPLIT=FILE" in capsys.readouterr().err


def test_demo_step_writes_results(tiny_llama, tmp_path):
    from ilm.eval.demo import run

    summary = run(tmp_path, tiny_llama, quick=True)
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert summary["results"] == str(tmp_path / "eval" / "results.json")
    assert [r["task"] for r in res["results"]] == ["ilm_license_ppl", "ilm_stdlib_mc"]
    assert summary["ppl_docs"] == 4 and summary["mc_questions"] == 40
    assert 0 < summary["bits_per_byte"] < 16 and 0.0 <= summary["mc_acc"] <= 1.0
    from ilm.report.evaluation import metric_rows

    got = {(r["task"], r["metric"]): r["value"] for r in metric_rows(res)}  # the report's eval table's rows
    assert {"bits_per_byte", "acc", "acc_norm"} <= {metric for _, metric in got}
    assert got[("ilm_stdlib_mc", "acc")] == summary["mc_acc"]


def test_niah_subcommand_is_registered_from_its_module(monkeypatch, capsys):
    """`ilm eval niah` comes from ilm.eval.niah when that module exists (a stand-in here)."""
    import sys
    import types

    calls = []
    stub = types.ModuleType("ilm.eval.niah")

    def register(parser):
        parser.add_argument("--checkpoint", required=True)
        parser.set_defaults(func=lambda args: calls.append(args.checkpoint) or 0)

    stub.register = register
    monkeypatch.setitem(sys.modules, "ilm.eval.niah", stub)
    assert main(["eval", "niah", "--checkpoint", "X"]) == 0
    assert calls == ["X"]


def test_scoring_shares_prefixes_and_matches_a_plain_forward(tiny_llama):
    """Choices whose inputs are prefixes of one another share one forward pass, with the same numbers as
    scoring each request alone from full logits."""
    import torch

    from ilm.eval.lm import EvalModel

    lm = EvalModel(tiny_llama, device="cpu", batch_size=1)
    ctx = lm.encode("Which module does the work? Answer: the quick brown fox module.")
    requests = [(ctx, [40]), (ctx, [41]), (ctx, [42, 43]), (ctx, [42, 44, 45]), (ctx[:3], [7, 8])]
    got = lm.score_tokens(requests)
    assert len(ctx) > 12 and lm.forwards == 2  # the first four inputs are prefixes of ctx + [42, 44]
    lm.batch_size = 4  # one padded batch: the same numbers
    assert max(abs(a[0] - b[0]) for a, b in zip(lm.score_tokens(requests), got)) < 1e-5
    for (c, x), (ll, greedy) in zip(requests, got):
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(torch.tensor([c + x]))[0, :-1].float(), dim=-1)[len(c) - 1:]
        want = lp.gather(1, torch.tensor(x)[:, None]).sum().item()
        assert abs(ll - want) < 1e-5
        assert greedy == bool((lp.argmax(-1) == torch.tensor(x)).all())


def test_a_batched_score_is_the_score_alone_under_dynamic_ntk(tiny_llama):
    """Dynamic NTK, requests of mixed lengths past max_position_embeddings, one right-padded batch (and a
    prefix of a longer input): each request scores what it scores alone. Without a per-row RoPE length the
    shorter rows would rotate with the padded batch's base (checked below to be a visible difference)."""
    import torch

    from ilm.eval.lm import EvalModel
    from ilm.model import build_model, get_preset

    lm = EvalModel(tiny_llama, device="cpu", batch_size=8, max_length=200)
    cfg = get_preset("tiny", vocab_size=lm.model.config.vocab_size, max_position_embeddings=32,
                     rope_scaling={"type": "dynamic", "factor": 8.0}, rope_theta=10_000.0)
    lm.model = build_model(cfg, seed=5).eval()
    with torch.no_grad():  # sharper attention and outputs: RoPE's base then shows in the scores
        for name, p in lm.model.named_parameters():
            if name.endswith(("wqkv.weight", "wo.weight")):
                p.mul_(8.0)
    text = " ".join(f"the quick brown fox {i} jumps over module {i * 7}" for i in range(30))
    ids = lm.encode(text)
    assert len(ids) > 150
    requests = [(ids[:40], ids[40:43]), (ids[:90], ids[90:92]), (ids[:150], ids[150:151]), (ids[:20], ids[20:24]),
                (ids[:149], ids[149:150])]  # the last: a prefix of the third's input, past the window
    batched = lm.score_tokens(requests)
    lm.batch_size = 1
    alone = [lm.score_tokens([r])[0] for r in requests]
    assert max(abs(a[0] - b[0]) for a, b in zip(batched, alone)) < 1e-5
    assert [a[1] for a in batched] == [b[1] for b in alone]
    # the same short row with the RoPE base of the padded batch (no rope_len) scores differently
    ctx, cont = requests[0]
    row = torch.zeros(1, 150, dtype=torch.long)
    row[0, :42] = torch.tensor(ctx + cont[:-1])
    with torch.no_grad():
        lp = torch.log_softmax(lm.model(row)[0, 39:42].float(), dim=-1)
    padded_base = lp.gather(1, torch.tensor(cont)[:, None]).sum().item()
    assert abs(padded_base - alone[0][0]) > 1e-3


def test_an_lm_eval_task_on_local_data_and_lm_eval_s_own_cli(tiny_llama, tmp_path, capsys):
    """`ilm eval run --tasks arc_easy --data arc_easy:test=FILE` runs lm-eval's own arc_easy config on a
    local file (reported as OpenCompass's ARC-e); `ilm eval lm-eval --model ilm` is lm-eval's command line."""
    from ilm.eval.tasks import SHIPPED

    f = tmp_path / "arc.jsonl"
    f.write_text("".join(json.dumps({"id": str(i), "question": f"Which is {i}?", "answerKey": "B",
                                     "choices": {"text": ["zero", str(i), "two"], "label": ["A", "B", "C"]}}) + "\n"
                         for i in range(3)))
    out = tmp_path / "r.json"
    assert main(["eval", "run", "--checkpoint", str(tiny_llama), "--tasks", "arc_easy", "--data", f"arc_easy:test={f}",
                 "--limit", "2", "--out", str(out)]) == 0
    assert "ARC-e" in capsys.readouterr().out
    res = json.loads(out.read_text())["results"][0]
    assert res["task"] == "arc_easy" and res["samples_n"] == 2
    assert res["samples"][0]["arguments"][0][0] == "Question: Which is 0?\nAnswer:"  # lm-eval's own prompt
    assert main(["eval", "run", "--checkpoint", str(tiny_llama), "--tasks", "arc_easy", "--data",
                 f"arc_easy:train={f}"]) == 2
    assert "give its evaluation split (test or validation)" in capsys.readouterr().err
    assert main(["eval", "run", "--checkpoint", str(tiny_llama), "--tasks", "piqa", "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after lm-eval's progress bars)
    assert err.startswith("error: ") and "nothing is downloaded" in err and "--data piqa:SPLIT=FILE" in err

    assert main(["eval", "lm-eval", "--model", "ilm", "--model_args", f"pretrained={tiny_llama}", "--include_path",
                 str(SHIPPED), "--tasks", "ilm_stdlib_mc", "--limit", "2", "--batch_size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "ilm_stdlib_mc" in printed and "acc_norm" in printed


def test_do_sample_tasks_are_sampled_and_seeded(tiny_llama):
    """`generation_kwargs.do_sample: true` samples (repeats of one prompt differ), reproducibly for a seed;
    greedy requests stay greedy. Stop strings cut the text as lm-eval's hf model does."""
    from types import SimpleNamespace

    from ilm.eval.harness import IlmLM

    def reqs(kwargs, n=6):
        return [SimpleNamespace(args=("the quick brown fox", dict(kwargs))) for _ in range(n)]

    lm = IlmLM(pretrained=str(tiny_llama), batch_size=4, progress=False)
    sample = {"do_sample": True, "temperature": 1.0, "until": ["zzz"], "max_gen_toks": 8}
    a, b = lm.generate_until(reqs(sample)), lm.generate_until(reqs(sample))
    assert a == b and len(set(a)) > 1  # seeded, and the repeats are independent draws
    greedy = lm.generate_until(reqs({"do_sample": False, "until": ["zzz"], "max_gen_toks": 8}))
    assert len(set(greedy)) == 1
    assert len(greedy[0]) >= 4
    stop = greedy[0][2:4]
    cut = lm.generate_until(reqs({"until": [stop], "max_gen_toks": 8}, n=1))[0]
    assert cut == greedy[0].split(stop)[0]
