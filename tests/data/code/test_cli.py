"""`ilm data code`, `code-train-scorer`, `code-label-export` from the command line, with the code recipe."""

from __future__ import annotations

import json
from pathlib import Path

from ilm.cli import main
from ilm.data.io import read_all

from .conftest import installed
from .test_quality import labelled_python

ROOT = Path(__file__).resolve().parents[3]


def test_code_cli_loop(tmp_path: Path, capsys) -> None:
    labels = tmp_path / "labels.jsonl"
    items = labelled_python()
    labels.write_text("".join(json.dumps({"id": it.id, "text": it.text, "language": it.language,
                                          "label": "good" if it.label else "bad"}) + "\n" for it in items))
    model = tmp_path / "scorer.npz"
    assert main(["data", "code-train-scorer", str(labels), "-o", str(model)]) == 0
    assert '"trusted": ["python"]' in capsys.readouterr().out
    out = tmp_path / "run"
    recipe = tmp_path / "code.toml"
    recipe.write_text((ROOT / "recipes/data/code.toml").read_text().replace('model = ""', f'model = "{model}"'))
    assert main(["data", "code", str(installed("pluggy")), "-o", str(out), "--recipe", str(recipe), "-q",
                 "--sample-tokens", "8192"]) == 0
    printed = capsys.readouterr().out
    assert "input 14 = kept" in printed or "[OK]" in printed
    kept = read_all(out / "kept")
    assert kept and all("model_score" in d.metadata for d in kept if d.metadata["language"] == "python")
    export = tmp_path / "tolabel.jsonl"
    assert main(["data", "code-label-export", str(out / "kept"), "--model", str(model), "-n", "5", "-o", str(export)]) == 0
    rows = [json.loads(x) for x in export.read_text().splitlines()]
    assert len(rows) == 5 and all(r["label"] is None and r["text"] for r in rows)
    # labelled rows of the export feed the next round; a second export skips them
    export.write_text("".join(json.dumps({**r, "label": 1}) + "\n" for r in rows))
    again = tmp_path / "round2.jsonl"
    assert main(["data", "code-label-export", str(out / "kept"), "--model", str(model), "-n", "5",
                 "--exclude", str(export), "-o", str(again)]) == 0
    assert not {r["id"] for r in rows} & {json.loads(x)["id"] for x in again.read_text().splitlines()}
