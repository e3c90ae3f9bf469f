import json

from ilm.cli import main
from ilm.model.hf import load_checkpoint


def test_demo_runs_every_stage_and_the_tiny_recipe_learns(tmp_path, capsys):
    """The whole `make demo` path: recipes/tiny.toml on the default corpus, all three stages."""
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for tag in ("[data]", "[code]", "[tokenizer]", "[shards]", "[pretrain]", "[sft]", "[rm]", "[model] chat sample",
                "[rlhf] round 1 fast path", "[rlhf] reward and KL curves"):
        assert tag in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ledger"]["balanced"] is True
    assert report["ledger"]["kept_docs"] + report["ledger"]["removed_docs"] == report["ledger"]["input_docs"]
    assert (tmp_path / "pretrain" / "training.png").exists()
    pre = report["pretrain"]
    assert pre["steps"] == pre["total_steps"] == 500
    # the tiny recipe's held-out loss ends well below the default corpus's unigram entropy
    assert pre["eval_loss"] < pre["unigram_entropy"] - 1.0, (pre["eval_loss"], pre["unigram_entropy"])
    assert set(report["rm"]["accuracy_by_domain"]) >= {"helpful", "code", "math"}
    rlhf = report["rlhf"]  # two rounds of PPO with the fast path; the curves plotted
    assert [c["round"] for c in rlhf["curves"]] == [1, 2] and (tmp_path / "rlhf-rounds" / "curves.png").exists()
    assert rlhf["rounds"]["1"]["fast"]["pairs"] >= 20
    model = load_checkpoint(tmp_path / "checkpoint-llama")
    assert model.config.vocab_size == 2048 and model.config.rope_theta == 1_000_000
