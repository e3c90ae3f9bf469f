"""One objective at any world size: the loss of an optimizer step is the token-weighted (pretraining, SFT) or
pair-weighted (reward model) mean over every micro-batch of every process, so 1 process and 2, 1
micro-batch and several, give the same loss and the same updated weights, even when the micro-batches
hold very different numbers of trained tokens or pairs. Gradient accumulation under FSDP2 reduce-scatters
once per optimizer step, not once per micro-batch.

Each run is one optimizer step of the real trainer. The optimiser is AdamW with eps = 1: its first step is
then about lr * gradient, so the updated weights see the gradient's scale and direction (with the usual
tiny eps, Adam's first step is lr * sign(gradient), blind to any weighting). The 2-process runs all happen
in one torchrun launch (objective_worker.py), shared by the tests of this module.
"""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from ilm.config import from_dict
from ilm.data.shards import write_token_shards
from ilm.model.hf import load_checkpoint
from ilm.train import pretrain, reward, sft
from ilm.train.reward_model import REWARD_TOKEN, load_reward_model
from ilm.train.sft import write_jsonl

WORKER = Path(__file__).with_name("objective_worker.py")
TOL = 1e-5
# first AdamW step ~ lr * gradient (eps 1 >> |gradient|); no warm-up, decay or clipping in the way
OPTIM = {"lr": 0.1, "eps": 1.0, "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 1e6}
TRAIN = {"precision": "fp32", "device": "cpu", "progress": False, "deterministic": True, "checkpoint_every": 1000,
         "eval_every": 1000}
RM_CONDITIONS = {"default": "Judge."}
MODEL = {"preset": "tiny", "overrides": {"vocab_size": 512, "max_position_embeddings": 128}}


# ----------------------------------------------------------------------------- data and recipes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ilm.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("objective")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (root / "text.txt").write_text("\n".join(p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py"))[:30]))
    tok = train_tokenizer([root / "text.txt"], root / "tok", vocab_size=512)

    # pretraining: packed rows of 32 from long documents (31 trained positions per row) and one-token
    # documents (none: every position predicts the start of the next document)
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 512, 64) for _ in range(8)] + [rng.integers(3, 512, 1) for _ in range(256)]
    write_token_shards(root / "tokens", docs)

    # SFT: one conversation with ~100 trained tokens, three with 3; each fills its own row of 128
    answer = "the function returns a sorted list of values " * 2
    question = "please tell me about the module and its functions "
    convs = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer * 2}]}]
    convs += [{"messages": [{"role": "user", "content": question * 3 + str(i)}, {"role": "assistant", "content": "ok"}]}
              for i in range(3)]
    write_jsonl(root / "sft.jsonl", convs)
    encoded, _ = sft.encode_conversations([root / "sft.jsonl"], tok, window=128)
    trained = sorted(int(c.mask.sum()) for c in encoded)
    assert trained[-1] >= 90 and trained[0] <= 4 and min(len(c.ids) for c in encoded) > 64, trained

    # RM: one long pair, and three short pairs that share a token budget of 256 (2 processes: one batch each)
    pairs = [{"prompt": question * 2, "chosen": "yes it is " * 3, "rejected": "no it is not " * 3}]
    pairs += [{"prompt": f"hi {i}", "chosen": "good", "rejected": "bad"} for i in range(3)]
    write_jsonl(root / "rm.jsonl", pairs)
    rm_data = reward.RMData(train=[str(root / "rm.jsonl")], max_length=128, conditions=RM_CONDITIONS)
    encoded_pairs, _ = reward.encode_pairs(rm_data.train, tok, rm_data, tok.control_ids[REWARD_TOKEN])
    sizes = [p.tokens for p in encoded_pairs]
    assert sorted(len(b) for b in reward.token_budget_batches(sizes, 256, seed=0)) == [1, 3], sizes
    assert len(reward.token_budget_batches(sizes, 512, seed=0)) == 1, sizes
    return {"root": root}


def pretrain_config(data, run_dir: Path, micro_batch_rows: int, **train) -> dict:
    return {"run_dir": str(run_dir), "model": {"preset": "tiny", "overrides": {"vocab_size": 512,
                                                                              "max_position_embeddings": 32}},
            "sources": [{"name": "mixed", "path": str(data["root"] / "tokens")}],
            "stages": [{"name": "only", "window": 32, "fraction": 1.0, "mixture": {"mixed": 1.0}}],
            "optim": OPTIM,
            "train": {**TRAIN, "total_tokens": 256, "batch_tokens": 256, "micro_batch_rows": micro_batch_rows,
                      **train}}


def sft_config(data, run_dir: Path, micro_batch_rows: int) -> dict:
    return {"run_dir": str(run_dir), "tokenizer": str(data["root"] / "tok"), "model": MODEL,
            "data": {"train": [str(data["root"] / "sft.jsonl")]}, "optim": OPTIM,
            "train": {**TRAIN, "window": 128, "batch_rows": 4, "micro_batch_rows": micro_batch_rows}}


def rm_config(data, run_dir: Path, batch_tokens: int) -> dict:
    return {"run_dir": str(run_dir), "tokenizer": str(data["root"] / "tok"), "model": MODEL,
            "data": {"train": [str(data["root"] / "rm.jsonl")], "max_length": 128, "conditions": RM_CONDITIONS},
            "optim": OPTIM,
            "train": {**TRAIN, "batch_tokens": batch_tokens}}


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def two_process(data, tmp_path_factory):
    """Every 2-process run of this module, in one torchrun launch."""
    out = tmp_path_factory.mktemp("two")
    jobs = [
        {"name": "pretrain", "stage": "pretrain", "config": pretrain_config(data, out / "pretrain", 2)},
        {"name": "pretrain_sync_every", "stage": "pretrain",
         "config": pretrain_config(data, out / "pretrain_sync_every", 2, reduce_every_micro_batch=True)},
        {"name": "sft", "stage": "sft", "config": sft_config(data, out / "sft", 1)},
        {"name": "rm", "stage": "rm", "config": rm_config(data, out / "rm", 256)},
    ]
    (out / "jobs.json").write_text(json.dumps(jobs))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(WORKER), str(out / "jobs.json"), str(out / "out.json")]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((out / "out.json").read_text())
    for job in jobs:
        results[job["name"]]["run_dir"] = job["config"]["run_dir"]
    return results


def one_step(stage, config: dict) -> dict:
    module, cls = {"pretrain": (pretrain, pretrain.PretrainConfig), "sft": (sft, sft.SFTConfig),
                   "rm": (reward, reward.RMConfig)}[stage]
    summary = module.train(from_dict(cls, config), resume="never")
    return {"run_dir": config["run_dir"], "export": summary["export"]}


def loss_of(run: dict) -> float:
    rows = [json.loads(x) for x in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    return rows[0]["loss"]


def weights_of(run: dict, reward_model: bool = False) -> dict[str, torch.Tensor]:
    model = load_reward_model(run["export"])[0] if reward_model else load_checkpoint(run["export"])
    return model.state_dict()


def assert_same_step(a: dict, b: dict, reward_model: bool = False) -> None:
    assert abs(loss_of(a) - loss_of(b)) <= TOL, (loss_of(a), loss_of(b))
    wa, wb = weights_of(a, reward_model), weights_of(b, reward_model)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= TOL, worst


# ----------------------------------------------------------------------------- tests


def test_pretraining_step_is_token_weighted_at_any_split(data, two_process, tmp_path):
    whole = one_step("pretrain", pretrain_config(data, tmp_path / "m8", 8))  # 1 process, 1 micro-batch of 8 rows
    micro = one_step("pretrain", pretrain_config(data, tmp_path / "m2", 2))  # 1 process, 4 micro-batches of 2
    assert_same_step(whole, micro)
    assert_same_step(whole, two_process["pretrain"])  # 2 processes (FSDP), 2 micro-batches each


def test_sft_step_is_token_weighted_at_any_split(data, two_process, tmp_path):
    whole = one_step("sft", sft_config(data, tmp_path / "m4", 4))  # 1 process, 1 micro-batch of 4 rows
    micro = one_step("sft", sft_config(data, tmp_path / "m1", 1))  # 1 process, 4 micro-batches of 1
    assert_same_step(whole, micro)
    assert_same_step(whole, two_process["sft"])  # 2 processes, 2 micro-batches each


def test_reward_model_step_is_pair_weighted_across_processes(data, two_process, tmp_path):
    # 1 process: all four pairs in one batch of 512 tokens; 2 processes: a batch of 256 each, 1 pair and 3
    whole = one_step("rm", rm_config(data, tmp_path / "rm", 512))
    assert_same_step(whole, two_process["rm"], reward_model=True)


def test_fsdp_accumulation_reduce_scatters_once_per_step(two_process):
    once, every = two_process["pretrain"], two_process["pretrain_sync_every"]
    units = once["fsdp_units"][0]
    assert units >= 2  # the decoder layers and the root
    assert once["reduce_scatters"] == [units]  # one step of 2 micro-batches: one reduce-scatter per unit
    assert once["run_reduce_scatters"] == units  # and none elsewhere in the run
    assert every["reduce_scatters"] == [2 * units]  # train.reduce_every_micro_batch: the memory-saving choice
    assert_same_step(once, every)


def test_ddp_accumulation_all_reduces_once_per_step(two_process):
    ddp = two_process["ddp"]
    assert ddp["allreduces"] == 1  # one bucket, reduced in the last micro-batch's backward only
    assert ddp["count"] == 17 and abs(ddp["loss"] - ddp["ref_loss"]) <= TOL
    assert ddp["grad_diff"] <= TOL  # equal to one process over the four micro-batches, weighted by rows


def test_replicated_module_skips_the_reduction_until_the_last_micro_batch(two_process):
    """The trainers' DDP is `replicate` (apply_ddp), which is not a DistributedDataParallel instance."""
    rep = two_process["replicate"]
    assert rep["no_sync"] > 0.1  # each process kept its own gradient: no all-reduce in that backward
    assert rep["sync"] == 0.0  # reduced: every process holds the average
