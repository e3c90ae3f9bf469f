"""docs/your-data.md, run as a reader runs it: its shell blocks, in order, in an empty folder, with nothing set
beyond what the page says (ILM, the checkout). Every stage must leave its output, and the report must show
them all."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "your-data.md"


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_the_page_has_every_stage():
    script = "\n".join(shell_blocks(DOC.read_text()))
    for command in ("ilm data run", "ilm tokenizer build", "ilm pretrain tokenize", "ilm pretrain recipes/",
                    "ilm sft", "ilm rm train", "ilm rlhf ppo", "ilm eval run", "ilm eval niah", "ilm report my"):
        assert command in script, command


@pytest.mark.slow
def test_walk_through_runs_command_by_command(tmp_path):
    script = "set -euo pipefail\n" + "\n".join(shell_blocks(DOC.read_text()))
    env = {**os.environ, "ILM": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "ILM_PROGRESS_SECONDS": "3600"}
    env.pop("ILM_BASE_DIR", None)
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                       timeout=1800)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    my = tmp_path / "my"
    for out in ("data/ledger.json", "tokenizer/tokenizer.json", "tokens/meta.json", "pretrain/final/config.json",
                "sft/final/config.json", "rm/final/config.json", "rlhf/summary.json", "eval/results.json",
                "eval/niah.json", "report.html"):
        assert (my / out).exists(), out
    page = (my / "report.html").read_text()
    for sid in ("data", "tokenizer", "pretrain", "sft", "rm", "rlhf", "eval"):
        assert f'<section id="{sid}" data-status="ran"' in page, sid
    assert not (tmp_path / "runs").exists()  # every output went where the page said
