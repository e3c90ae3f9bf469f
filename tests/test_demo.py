from ilm.cli import main
from ilm.model.hf import load_checkpoint


def test_demo_runs_and_leaves_loadable_checkpoints(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "demo finished" in out
    for fmt in ("internlm2", "llama"):
        model = load_checkpoint(tmp_path / f"checkpoint-{fmt}")
        assert model.config.num_layers == 2
