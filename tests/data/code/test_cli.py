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


def test_code_cli_errors_go_to_stderr(tmp_path: Path, capsys) -> None:
    """A user's mistake in each code verb: exit 1, one line on stderr naming the verb, stdout empty."""
    missing = str(tmp_path / "no-such-thing")
    bad_labels = tmp_path / "one-class.jsonl"
    bad_labels.write_text(json.dumps({"id": "a", "text": "x = 1\n", "language": "python", "label": 1}) + "\n")
    cases = [
        ("code", ["data", "code", missing, "-o", str(tmp_path / "run"), "-q"]),
        ("code", ["data", "code", str(tmp_path), "-o", str(tmp_path / "run2"), "-q", "--recipe", missing]),
        ("code", ["data", "code", str(tmp_path), "-o", str(tmp_path / "run3"), "-q", "--tokenizer", missing]),
        ("code-train-scorer", ["data", "code-train-scorer", missing, "-o", str(tmp_path / "m.npz")]),
        ("code-train-scorer", ["data", "code-train-scorer", str(bad_labels), "-o", str(tmp_path / "m.npz")]),
        ("code-label-export", ["data", "code-label-export", str(tmp_path), "--model", missing, "-o", str(tmp_path / "x.jsonl")]),
    ]
    for verb, argv in cases:
        assert main(argv) == 1, argv
        cap = capsys.readouterr()
        assert cap.out == "", (argv, cap.out)
        lines = cap.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"ilm data {verb}: "), (argv, cap.err)
        assert "Traceback" not in cap.err
