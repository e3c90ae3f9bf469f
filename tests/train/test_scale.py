"""Training beyond one process: DDP keeps replicas equal, and setup never holds a whole parameter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from ilm.model import build_model, get_preset
from ilm.model.hf import save_checkpoint
from ilm.train.demo_data import demo_conversations
from ilm.train.sft import write_jsonl

PROBE = Path(__file__).with_name("rank_probe.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _probe(*args: str, nproc: int) -> None:
    launcher = [sys.executable] if nproc == 1 else [
        str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(nproc)]
    done = subprocess.run([*launcher, str(PROBE), *args], env=ENV, check=False, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_ddp_replicas_stay_equal_and_match_one_process(corpus, tmp_path, helpers):
    states = {}
    for nproc in (1, 2):
        out = tmp_path / f"out{nproc}"
        out.mkdir()
        recipe = helpers.tiny_recipe(corpus, tmp_path / f"run{nproc}", fsdp=False, max_steps=6, checkpoint_every=6,
                                     eval_every=1000)
        (tmp_path / f"r{nproc}.json").write_text(json.dumps(recipe))
        _probe("params", str(out), str(tmp_path / f"r{nproc}.json"), nproc=nproc)
        states[nproc] = [torch.load(out / f"rank{r}-step6.pt", weights_only=True) for r in range(nproc)]
    one, (rank0, rank1) = states[1][0], states[2]
    start = build_model(get_preset("tiny", vocab_size=512), seed=0).state_dict()
    assert any(not torch.equal(one[k], start[k]) for k in one)  # it trained
    for k in one:
        assert torch.equal(rank0[k], rank1[k]), k  # the replicas did not drift apart
        torch.testing.assert_close(rank0[k], one[k], rtol=1e-4, atol=1e-5)  # = one process on the global batch


def test_no_process_holds_a_whole_parameter_during_setup(corpus, tmp_path, helpers):
    pre = helpers.tiny_recipe(corpus, tmp_path / "pre", max_steps=1, eval_every=1000)
    overrides = {"vocab_size": 512, "max_position_embeddings": 256}
    init = save_checkpoint(build_model(get_preset("tiny", **overrides), seed=3), tmp_path / "base", fmt="llama")
    write_jsonl(tmp_path / "sft.jsonl", demo_conversations(n=8, seed=1))
    sft = {"run_dir": str(tmp_path / "sft"), "tokenizer": str(corpus["tokenizer"]), "init": str(init),
           "model": {"preset": "tiny", "overrides": overrides}, "data": {"train": [str(tmp_path / "sft.jsonl")]},
           "train": {"window": 256, "batch_rows": 2, "micro_batch_rows": 1, "precision": "fp32", "device": "cpu",
                     "progress": False, "max_steps": 1}}
    for name, recipe in (("pre", pre), ("sft", sft)):
        (tmp_path / f"{name}.json").write_text(json.dumps(recipe))
    _probe("setup", str(tmp_path), str(tmp_path / "pre.json"), str(tmp_path / "sft.json"), nproc=2)
    whole = 512 * 64 * 4  # bytes of the largest parameter (embedding / output head, fp32)
    for rank in (0, 1):
        found = json.loads((tmp_path / f"setup-rank{rank}.json").read_text())
        for stage in ("pretrain", "sft"):
            assert 0 < found[stage]["largest_bytes"] < whole, (rank, stage, found[stage])
            assert found[stage]["same_names"] and found[stage]["max_diff"] == 0.0, (rank, stage, found[stage])
