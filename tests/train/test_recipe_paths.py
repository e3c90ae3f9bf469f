"""Relative paths in a recipe are read against the recipe's base directory, not the working directory, so a
recipe works from anywhere (the rule: ilm.config module docstring and README "Your own data")."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ilm.config import load, recipe_base
from ilm.train.pretrain import PretrainConfig
from ilm.train.sft import SFTConfig

REPO = Path(__file__).resolve().parents[2]


def test_shipped_recipes_resolve_against_the_project_root_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ILM_BASE_DIR", raising=False)
    cfg = load(SFTConfig, REPO / "recipes" / "sft-tiny.toml")
    assert cfg.run_dir == str(REPO / "runs/demo/sft") and cfg.init == str(REPO / "runs/demo/pretrain/final")
    assert cfg.data.train == [str(REPO / "runs/demo/sft-data/train.jsonl")]
    pre = load(PretrainConfig, REPO / "recipes" / "tiny.toml", ["--run_dir=elsewhere"])
    assert pre.sources[0].path == str(REPO / "runs/demo/tokens/text")
    assert pre.run_dir == "elsewhere"  # an override is read as typed, against the working directory
    assert recipe_base(REPO / "recipes" / "data" / "code.toml") == REPO


def test_a_recipe_outside_recipes_resolves_against_its_folder_or_the_base_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("ILM_BASE_DIR", raising=False)
    (tmp_path / "exp").mkdir()
    recipe = tmp_path / "exp" / "mine.toml"
    recipe.write_text('run_dir = "out"\ninit = "/abs/model"\n[data]\ntrain = ["data/a.jsonl"]\n'
                      '[data.conditions]\ndefault = "not a path"\n')
    from ilm.train.reward import RMConfig

    cfg = load(RMConfig, recipe)
    assert cfg.run_dir == str(tmp_path / "exp" / "out") and cfg.init == "/abs/model"
    assert cfg.data.train == [str(tmp_path / "exp" / "data/a.jsonl")] and cfg.data.conditions["default"] == "not a path"
    assert load(RMConfig, recipe, base_dir=tmp_path).run_dir == str(tmp_path / "out")
    monkeypatch.setenv("ILM_BASE_DIR", str(tmp_path / "base"))
    assert load(RMConfig, recipe).run_dir == str(tmp_path / "base" / "out")


def test_pretraining_from_another_working_directory_finds_its_files(corpus, tmp_path, helpers):
    """A project folder with recipes/ and relative paths, run from `/`: the run lands in the project."""
    proj = tmp_path / "proj"
    for name in ("a", "b", "held"):
        shutil.copytree(corpus["tokens"][name], proj / "tokens" / name)
    shutil.copytree(corpus["tokenizer"], proj / "tok")
    recipe = helpers.tiny_recipe(corpus, "runs/p", total_tokens=512 * 4, checkpoint_every=100, eval_every=100)
    recipe["tokenizer"] = "tok"
    recipe["sources"] = [{"name": "a", "path": "tokens/a"}, {"name": "b", "path": "tokens/b"}]
    recipe["train"]["eval_source"] = "tokens/held"
    (proj / "recipes").mkdir()
    path = helpers.write_recipe(proj / "recipes" / "p.toml", recipe)
    env = {k: v for k, v in os.environ.items() if k != "ILM_BASE_DIR"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "ilm.cli", "pretrain", str(path), "--train.max_steps=2"],
                          cwd="/", env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (proj / "runs" / "p" / "metrics.jsonl").exists()
