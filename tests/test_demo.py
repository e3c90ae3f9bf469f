import json

from ilm.cli import main
from ilm.model.hf import load_checkpoint


def test_quick_demo_runs_every_stage(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quick"]) == 0
    out = capsys.readouterr().out
    for tag in ("[data]", "[code]", "[tokenizer]", "[shards]", "[pretrain]", "[model] sample"):
        assert tag in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ledger"]["balanced"] is True
    assert report["ledger"]["kept_docs"] + report["ledger"]["removed_docs"] == report["ledger"]["input_docs"]
    assert (tmp_path / "pretrain" / "training.png").exists()
    model = load_checkpoint(tmp_path / "checkpoint-llama")
    assert model.config.vocab_size == 2048 and model.config.rope_theta == 1_000_000
