"""Online RLHF (PPO) on CPU: rollout tokens/s and PPO update time per 1,000 rollout tokens, through the real
`ilm rlhf ppo` loop (`ilm.train.rlhf.ppo.train`) on a tiny actor / reward model / critic, side by side with
TRL's PPO trainer (`trl.experimental.ppo.PPOTrainer`) on the same weights exported to HF Llama format.

TRL's PPO trainer: trl 1.13 removed it (1.16, in the dev extra, ships GRPO / RLOO / DPO but no PPO); the
newest release that has it is trl 1.12.0, and it runs with the installed transformers 5.x / accelerate /
datasets. One environment cannot hold two versions of `trl`, so it is not a `pip` extra: `make bench`
installs it on its own, `pip install --no-deps --target .venv/trl-ppo trl==1.12.0` (its dependencies are
those of trl 1.16, already installed), and this benchmark runs TRL's side in a child process with that
directory first on `sys.path` ($ILM_TRL_PPO overrides the directory). Without it, TRL's side is skipped
and said so; transformers' sampling `generate` (what TRL rolls out with) is measured either way.

Same on both sides: the actor (policy and reference), the reward model (backbone + head; TRL's
`LlamaForSequenceClassification` with the head copied into `score`) which is also the critic's start,
16 queries of exactly 32 tokens per update, 64 new tokens per response (no stop token: every response runs
to the end, so both sides generate the same number of tokens), 2 mini-batches of 8 rows, 1 PPO epoch,
kl_coef 0.01, k1, fp32, 1 torch thread; no ptx (TRL's PPO has none), no critic warm-up. Differences TRL
fixes in code: it samples with top_p 1.0 (ours: 0.9) and keeps every step's logits from `generate`; its
gradient accumulation (2 micro-batches of 8) makes 1 optimizer step per update where ours makes 2 (the
forwards and backwards are the same; AdamW on a tiny model is noise). The first update of each side warms
up and is not timed. "Update" = everything in an update but the generate calls (reference / critic / RM
forwards, GAE, PPO forwards + backwards, optimizer).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"
REPO = Path(__file__).resolve().parents[1]
TRL_PPO = Path(os.environ.get("ILM_TRL_PPO", REPO / ".venv" / "trl-ppo"))  # trl==1.12.0, see the docstring
TRL_PPO_VERSION = "1.12.0"
BATCH, PROMPT, NEW = 16, 32, 64


def _setup(root: Path) -> dict:
    """Tokenizer (stdlib text, 512 tokens), random tiny actor + reward model exports, 64 queries."""
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint
    from ilm.tokenizer import train_tokenizer
    from ilm.train.reward_model import REWARD_TOKEN, RewardModel, save_reward_model

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (root / "text.txt").write_text("\n".join(p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py"))[:30]))
    tok = train_tokenizer([root / "text.txt"], root / "tok", vocab_size=512)
    extras = {p.name: p.read_bytes() for p in (root / "tok").iterdir() if p.is_file()}
    cfg = get_preset("tiny", vocab_size=512, max_position_embeddings=256)
    actor = build_model(cfg, seed=0)
    save_checkpoint(actor, root / "actor", extra_files=extras)
    save_checkpoint(actor, root / "llama", fmt="llama")
    meta = {"reward_token": REWARD_TOKEN, "reward_token_id": tok.control_ids[REWARD_TOKEN],
            "conditions": {"default": "Be helpful."}, "default_domain": "default", "max_length": 256}
    rm = RewardModel(build_model(cfg, seed=1))
    save_reward_model(rm, root / "rm", meta, root / "tok")
    save_checkpoint(rm.backbone, root / "rm_llama", fmt="llama")  # TRL's reward / value model: + the head
    torch.save({"score.weight": rm.v_head.weight.detach().clone()}, root / "rm_llama" / "score.pt")
    rng = random.Random(0)
    words = [w for w in (root / "text.txt").read_text().split()[:5000] if w.isalpha() and len(w) <= 10]
    queries = []
    for _ in range(64):  # user text trimmed so each rendered query is exactly PROMPT tokens
        msgs = [{"role": "user", "content": " ".join(rng.sample(words, 40))}]
        while len(tok.render(msgs, add_generation_prompt=True).ids) > PROMPT and " " in msgs[0]["content"]:
            msgs[0]["content"] = msgs[0]["content"].rsplit(" ", 1)[0]
        queries.append({"messages": msgs, "category": "default"})
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return {"tok": tok, "actor": actor}


def ours(root: Path, updates: int) -> dict:
    from ilm.config import from_dict
    from ilm.train.rlhf.ppo import PPOConfig, train

    cfg = from_dict(PPOConfig, {
        "run_dir": str(root / "run"), "tokenizer": str(root / "tok"), "actor": str(root / "actor"),
        "reward_model": str(root / "rm"), "data": {"queries": [str(root / "queries.jsonl")], "max_query_tokens": PROMPT},
        "ppo": {"rollout_batch": BATCH, "generation_batch": BATCH, "max_new_tokens": NEW, "mini_batches": 2,
                "micro_batch_rows": BATCH // 2, "ppo_epochs": 1, "critic_warmup_updates": 0, "ptx_coef": 0.0},
        "optim": {"actor_lr": 1e-5, "critic_lr": 1e-5},
        "train": {"updates": updates, "precision": "fp32", "device": "cpu", "checkpoint_every": 10_000,
                  "progress": False}})
    # generation never emits a stop id here: every row runs to max_new_tokens, like the HF side
    import ilm.train.rlhf.rollout as ppo_mod  # where rank_rollouts finds `sample`

    real = ppo_mod.sample
    ppo_mod.sample = lambda m, prompts, n, stop_ids, *a, **k: real(m, prompts, n, (), *a, **k)
    try:
        train(cfg, resume="never")
    finally:
        ppo_mod.sample = real
    rows = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()][1:]  # 1st: warm-up
    gen_s = [r["rollout_tokens"] / r["rollout_tokens_per_s"] for r in rows]
    tokens = sum(r["rollout_tokens"] for r in rows)
    rest_s = sum(r["update_s"] for r in rows) - sum(gen_s)
    return {"updates_timed": len(rows), "rollout_tokens": tokens,
            "rollout_tokens_per_s": round(tokens / sum(gen_s), 1),
            "update_s_per_1k_tokens": round(1000 * rest_s / tokens, 3),
            "whole_update_s_per_1k_tokens": round(1000 * sum(r["update_s"] for r in rows) / tokens, 3)}


def hf_generate(root: Path, prompts: list[list[int]], repeats: int) -> dict:
    """What TRL's PPO trainer runs to roll out: transformers' sampling `generate` (KV cache, top_p 0.9)."""
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(root / "llama").eval()
    ids = torch.tensor(prompts)
    times = []
    for r in range(repeats + 1):
        torch.manual_seed(r)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.9,
                                 temperature=1.0, top_k=0, max_new_tokens=NEW, min_new_tokens=NEW,
                                 eos_token_id=None, pad_token_id=2)
        if r:  # the first call warms up
            times.append(time.perf_counter() - t0)
        assert out.shape[1] == PROMPT + NEW
    return {"rollout_tokens_per_s": round(BATCH * NEW * repeats / sum(times), 1), "transformers": transformers.__version__}


def trl_ppo(root: Path, prompts: list[list[int]], updates: int, pad_id: int) -> dict:
    """TRL's PPO trainer, `updates` updates on the same models and batch; runs in the child (see `main`)."""
    import time as clock

    import transformers
    import trl
    import trl.experimental.ppo.ppo_trainer as trl_module
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(1)
    tok = transformers.AutoTokenizer.from_pretrained(root / "tok")
    tok.pad_token_id = pad_id
    policy = transformers.LlamaForCausalLM.from_pretrained(root / "llama")
    ref = transformers.LlamaForCausalLM.from_pretrained(root / "llama")

    def scorer():
        m = transformers.LlamaForSequenceClassification.from_pretrained(root / "rm_llama", num_labels=1)
        with torch.no_grad():
            m.score.weight.copy_(torch.load(root / "rm_llama" / "score.pt", weights_only=True)["score.weight"])
        m.config.pad_token_id = pad_id
        return m

    data = Dataset.from_dict({"input_ids": prompts})
    args = PPOConfig(output_dir=str(root / "trl"), per_device_train_batch_size=BATCH // 2,
                     gradient_accumulation_steps=2, num_mini_batches=2, num_ppo_epochs=1,
                     total_episodes=BATCH * updates, response_length=NEW, local_rollout_forward_batch_size=BATCH // 2,
                     learning_rate=1e-5, kl_coef=0.01, kl_estimator="k1", stop_token_id=None, missing_eos_penalty=None,
                     num_sample_generations=0, report_to=[], save_strategy="no", logging_steps=10**6,
                     disable_tqdm=True, use_cpu=True, seed=0, bf16=False, fp16=False)
    gen_s: list[float] = []
    real = trl_module.batch_generation

    def timed(*a, **k):
        t0 = clock.perf_counter()
        out = real(*a, **k)
        gen_s.append(clock.perf_counter() - t0)
        return out

    marks: list[float] = []

    class Marks(transformers.TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append(clock.perf_counter())

        def on_step_end(self, *a, **k):
            marks.append(clock.perf_counter())

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=scorer(),
                         value_model=scorer(), train_dataset=data, eval_dataset=data, callbacks=[Marks()])
    trl_module.batch_generation = timed
    try:
        trainer.train()
    finally:
        trl_module.batch_generation = real
    update_s = [b - a for a, b in itertools.pairwise(marks)][1:]  # the first update warms up
    gen = gen_s[1:]
    tokens = BATCH * NEW * len(gen)
    return {"trl": trl.__version__, "trl_path": trl.__file__, "updates_timed": len(gen), "rollout_tokens": tokens,
            "rollout_tokens_per_s": round(tokens / sum(gen), 1),
            "update_s_per_1k_tokens": round(1000 * (sum(update_s) - sum(gen)) / tokens, 3),
            "whole_update_s_per_1k_tokens": round(1000 * sum(update_s) / tokens, 3)}


def _trl_child(root: Path, prompts: list[list[int]], updates: int, pad_id: int) -> dict:
    """Run `trl_ppo` in a child process with TRL_PPO first on sys.path (the dev environment's trl has no PPO)."""
    if not (TRL_PPO / "trl").is_dir():
        return {"skipped": f"no trl=={TRL_PPO_VERSION} at {TRL_PPO}; install it with `pip install --no-deps --target "
                           f"{TRL_PPO} trl=={TRL_PPO_VERSION}` (`make bench` does)"}
    (root / "trl_in.json").write_text(json.dumps({"prompts": prompts, "updates": updates, "pad_id": pad_id}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TRL_PPO), str(REPO / "src"), str(REPO)]),
           "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_ppo", "--trl-child", str(root)], env=env, cwd=REPO,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"failed": done.stderr[-2000:]}
    return json.loads((root / "trl_out.json").read_text())


def main() -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            s = _setup(root)
            updates = 3 if QUICK else 6
            mine = ours(root, updates + 1)
            prompts = [s["tok"].render(json.loads(x)["messages"], add_generation_prompt=True).ids
                       for x in (root / "queries.jsonl").read_text().splitlines()[:BATCH]]
            pad = s["tok"].pad_id
            prompts = [[pad] * (PROMPT - len(p)) + p for p in prompts]  # equal lengths (TRL masks the pad id)
            hf = hf_generate(root, prompts, updates)
            theirs = _trl_child(root, prompts, updates + 1, pad_id=pad)
    finally:
        torch.set_num_threads(before)
    out = {"model": "tiny (hidden 64, 2 layers, vocab 512)", "batch": BATCH, "prompt_tokens": PROMPT,
           "new_tokens": NEW, "torch_threads": 1, "ours": mine, "hf_generate": hf, "trl_ppo": theirs,
           "rollout_ours_over_hf": round(mine["rollout_tokens_per_s"] / hf["rollout_tokens_per_s"], 2)}
    line = (f"rollout tokens/s: ours {mine['rollout_tokens_per_s']:,}, transformers generate "
            f"{hf['rollout_tokens_per_s']:,} ({out['rollout_ours_over_hf']}x); PPO update without the rollout: ours "
            f"{mine['update_s_per_1k_tokens']} s per 1,000 rollout tokens")
    if "rollout_tokens_per_s" in theirs:
        out["rollout_ours_over_trl"] = round(mine["rollout_tokens_per_s"] / theirs["rollout_tokens_per_s"], 2)
        out["update_trl_over_ours"] = round(theirs["update_s_per_1k_tokens"] / mine["update_s_per_1k_tokens"], 2)
        out["whole_update_trl_over_ours"] = round(theirs["whole_update_s_per_1k_tokens"]
                                                  / mine["whole_update_s_per_1k_tokens"], 2)
        line += (f"; TRL {theirs['trl']} PPOTrainer: rollout {theirs['rollout_tokens_per_s']:,} tokens/s "
                 f"(ours {out['rollout_ours_over_trl']}x), update {theirs['update_s_per_1k_tokens']} s per 1,000 "
                 f"tokens (TRL / ours {out['update_trl_over_ours']}x)")
    else:
        line += f"; TRL PPO: {next(iter(theirs.values()))[:300]}"
    print(line, flush=True)
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--trl-child"]:
        where = Path(sys.argv[2])
        given = json.loads((where / "trl_in.json").read_text())
        (where / "trl_out.json").write_text(json.dumps(trl_ppo(where, given["prompts"], given["updates"],
                                                               given["pad_id"])))
    else:
        print(json.dumps(main(), indent=2))
