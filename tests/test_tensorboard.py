"""TensorBoard is optional, documented and installable as an extra (issue 10, item 18)."""

import sys
import tomllib
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_extra_and_readme():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(x.startswith("tensorboard") for x in extras["tb"])
    readme = (REPO / "README.md").read_text()
    assert "pip install 'ilm[tb]'" in readme and "tensorboard --logdir" in readme and "metrics.jsonl" in readme


def test_metrics_write_scalars_when_tensorboard_is_installed(tmp_path, monkeypatch):
    seen = []

    class Writer:
        def __init__(self, logdir):
            seen.append(("dir", logdir))

        def add_scalar(self, key, value, step):
            seen.append((key, value, step))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    from ilm.train.metrics import Metrics

    m = Metrics(tmp_path)
    m.log(3, loss=1.5, stage="s1")
    assert ("dir", str(tmp_path / "tensorboard")) in seen and ("loss", 1.5, 3) in seen
