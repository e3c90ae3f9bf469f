"""Online RLHF (PPO) on CPU, matched work side by side with TRL's PPO trainer: rollout tokens/s and the PPO
update's time per 1,000 rollout tokens, through the real `ilm rlhf ppo` loop (`ilm.train.rlhf.ppo.train`) and
TRL's `trl.experimental.ppo.PPOTrainer.train()`, on the same tiny actor / reward model / critic weights (TRL
gets the HF Llama export), at 16 and at 64 queries per update.

TRL's PPO trainer: trl 1.13 removed it (1.16, in the dev extra, ships GRPO / RLOO / DPO but no PPO); the
newest release that has it is trl 1.12.0, and it runs with the installed transformers 5.x / accelerate /
datasets. One environment cannot hold two versions of `trl`, so it is not a `pip` extra: `make bench`
installs it on its own, `pip install --no-deps --target .venv/trl-ppo trl==1.12.0`, and TRL's side runs in a
child process with that directory first on `sys.path` ($ILM_TRL_PPO overrides the directory). Without it,
TRL's side is skipped and said so.

Matched work (both sides' settings are printed): the same rows per generate call (TRL's
`local_rollout_forward_batch_size` = ilm's `generation_batch` = the whole batch: one call per update) and per
scoring forward (the batch), top_p 1.0 and temperature 1 (TRL fixes both in code), 64 new tokens per
response with no stop token (every row runs to the end: the same tokens on both sides), the 7B recipe's PPO
epochs and mini-batches (one micro-batch per mini-batch: one forward + backward and one optimizer step per
mini-batch on both sides), the same model passes (reference, critic/value and reward model forwards; the old
log-probs from sampling time on both: TRL takes them from `generate`'s logits, ilm from its sampler with
`recompute_logprobs = false`), kl_coef 0.01 (k1), fp32, 1 torch thread, no ptx (TRL's PPO has none), no
critic warm-up. What ilm does that TRL does not: it re-encodes every response into the conditional reward
model's format (system prompt = the query's condition) and scores that, and computes each sampled token's
entropy at sampling time. Each side runs in its own fresh process; the sides alternate (A, B then B, A) over
rounds; the first update of each run warms up and is not timed.

"Update" = one update's time minus its generate call (reference / critic / RM forwards, GAE, PPO
forwards + backwards, optimizer, logging), per 1,000 rollout tokens. TRL calls `gc.collect()` twice per
update, a fixed per-update cost (it walks every live Python object) that has nothing to do with PPO: it is
timed on its own (`gc.collect` wrapped inside TRL's trainer module) and TRL's update is reported with and
without it. Times are wall-clock and CPU (`time.process_time` of each one-thread process): on a shared
machine the wall time of a run moves with the other jobs (2-4x here), its CPU time much less.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from pathlib import Path

import torch

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"
REPO = Path(__file__).resolve().parents[1]
TRL_PPO = Path(os.environ.get("ILM_TRL_PPO", REPO / ".venv" / "trl-ppo"))  # trl==1.12.0, see the docstring
TRL_PPO_VERSION = "1.12.0"
PROMPT, NEW = 32, 64
BATCHES = (16, 64)  # queries per update
_RECIPE = tomllib.loads((REPO / "recipes" / "rlhf-internlm2-7b.toml").read_text())["ppo"]
PPO_EPOCHS, MINI_BATCHES = _RECIPE["ppo_epochs"], _RECIPE["mini_batches"]
ROUNDS = int(os.environ.get("ILM_BENCH_ROUNDS", "3"))


def settings(batch: int) -> dict[str, dict]:
    """Both sides' settings for `batch` queries per update, as each side spells them."""
    mini = batch // MINI_BATCHES
    common = {"queries_per_update": batch, "prompt_tokens": PROMPT, "new_tokens": NEW, "stop_token": None,
              "top_p": 1.0, "temperature": 1.0, "ppo_epochs": PPO_EPOCHS, "mini_batches": MINI_BATCHES,
              "rows_per_micro_batch": mini, "kl_coef": 0.01, "kl_estimator": "k1", "dtype": "fp32",
              "torch_threads": 1, "ptx": False}
    return {"ilm": {**common, "generation_batch": batch, "micro_batch_rows (scoring forward)": batch,
                    "recompute_logprobs": False, "critic_warmup_updates": 0},
            "trl": {**common, "local_rollout_forward_batch_size": batch, "per_device_train_batch_size": mini,
                    "gradient_accumulation_steps": MINI_BATCHES, "num_mini_batches": MINI_BATCHES}}


def _pretrained(actor, ids: list[int], steps: int = 150) -> torch.nn.Module:
    """A few seconds of next-token training on the stdlib text. Why: a random actor samples byte tokens
    that decode to U+FFFD, so ilm's reward model (which scores the re-encoded response text, `ilm rm`'s
    format) would read ~6x the tokens TRL's reads (400 for 64 sampled); after this, ~65, as with a real
    policy, and both sides score about the same number of tokens (both are printed)."""
    data = torch.tensor(ids)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(actor.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 65, (16,), generator=gen).tolist()
        x = torch.stack([data[s : s + 65] for s in starts])
        actor(x[:, :-1], labels=x[:, 1:]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return actor


def _setup(root: Path) -> None:
    """Tokenizer (stdlib text, 512 tokens), random tiny actor + reward model exports, 64 queries of PROMPT tokens
    (and the same queries rendered and left-padded for TRL)."""
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint
    from ilm.tokenizer import train_tokenizer
    from ilm.train.reward_model import REWARD_TOKEN, RewardModel, save_reward_model

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (root / "text.txt").write_text("\n".join(p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py"))[:30]))
    tok = train_tokenizer([root / "text.txt"], root / "tok", vocab_size=512)
    extras = {p.name: p.read_bytes() for p in (root / "tok").iterdir() if p.is_file()}
    cfg = get_preset("tiny", vocab_size=512, max_position_embeddings=256)
    actor = _pretrained(build_model(cfg, seed=0), tok.encode((root / "text.txt").read_text()))
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
    for _ in range(max(BATCHES)):  # user text trimmed so each rendered query is exactly PROMPT tokens
        msgs = [{"role": "user", "content": " ".join(rng.sample(words, 40))}]
        while len(tok.render(msgs, add_generation_prompt=True).ids) > PROMPT and " " in msgs[0]["content"]:
            msgs[0]["content"] = msgs[0]["content"].rsplit(" ", 1)[0]
        queries.append({"messages": msgs, "category": "default"})
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    prompts = [tok.render(q["messages"], add_generation_prompt=True).ids for q in queries]
    prompts = [[tok.pad_id] * (PROMPT - len(p)) + p for p in prompts]  # equal lengths (TRL masks the pad id)
    (root / "trl_prompts.json").write_text(json.dumps({"prompts": prompts, "pad_id": tok.pad_id}))


def ours(root: Path, batch: int, updates: int) -> dict:
    """ilm's `train` for `updates` updates (the first warms up); runs in a child process (see `_child`)."""
    from ilm.config import from_dict
    from ilm.train.rlhf import ppo, rollout, scoring
    from ilm.train.rlhf.ppo import PPOConfig, train

    torch.set_num_threads(1)
    run = root / f"run-{batch}-{time.monotonic_ns()}"
    cfg = from_dict(PPOConfig, {
        "run_dir": str(run), "tokenizer": str(root / "tok"), "actor": str(root / "actor"),
        "reward_model": str(root / "rm"), "data": {"queries": [str(root / "queries.jsonl")], "max_query_tokens": PROMPT},
        "ppo": {"rollout_batch": batch, "generation_batch": batch, "max_new_tokens": NEW, "top_p": 1.0,
                "temperature": 1.0, "mini_batches": MINI_BATCHES, "micro_batch_rows": batch, "ppo_epochs": PPO_EPOCHS,
                "critic_warmup_updates": 0, "ptx_coef": 0.0, "recompute_logprobs": False},
        "optim": {"actor_lr": 1e-5, "critic_lr": 1e-5},
        "train": {"updates": updates, "precision": "fp32", "device": "cpu", "checkpoint_every": 10_000,
                  "progress": False}})
    real_sample, real_write, real_rollouts = rollout.sample, ppo.write_atomic, ppo.rank_rollouts
    # generation never emits a stop id here: every row runs to max_new_tokens, like TRL's side
    rollout.sample = lambda m, prompts, n, stop_ids, *a, **k: real_sample(m, prompts, n, (), *a, **k)
    ends: list[tuple[float, float]] = []
    gen: list[tuple[float, float]] = []

    def write(*a, **k):  # the rollouts file is the last thing an update writes: its end marks the update's end
        real_write(*a, **k)
        ends.append(_now())

    rm_lengths: list[int] = []
    real_rm = scoring.rm_sequences

    def rm_sequences(*a, **k):  # how long the reward model's inputs are (TRL's: prompt + response)
        seqs, cut = real_rm(*a, **k)
        rm_lengths.extend(len(x) for x in seqs)
        return seqs, cut

    ppo.write_atomic, ppo.rank_rollouts, scoring.rm_sequences = write, _timed(real_rollouts, gen), rm_sequences
    try:
        train(cfg, resume="never")
    finally:
        rollout.sample, ppo.write_atomic, ppo.rank_rollouts = real_sample, real_write, real_rollouts
        scoring.rm_sequences = real_rm
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]  # 1st: warm-up
    tokens = sum(r["rollout_tokens"] for r in rows)
    return {**_rates(tokens, gen[1:], _spans(ends), (0.0, 0.0), len(rows)),
            "optimizer_steps_per_update": statistics.mean(r["optimizer_steps"] for r in rows),
            "rm_tokens_per_row": round(statistics.mean(rm_lengths), 1)}


def _now() -> tuple[float, float]:
    """(wall, CPU) seconds: the CPU time of this one-thread process moves less with the machine's load."""
    return time.perf_counter(), time.process_time()


def _timed(fn, spans: list[tuple[float, float]]):
    """`fn`, appending the (wall, CPU) seconds of each call to `spans`."""
    def run(*a, **k):
        t0 = _now()
        out = fn(*a, **k)
        t1 = _now()
        spans.append((t1[0] - t0[0], t1[1] - t0[1]))
        return out
    return run


def _spans(marks: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(marks)]


def _rates(tokens: int, gen: list[tuple[float, float]], updates: list[tuple[float, float]],
           gc: tuple[float, float], n: int) -> dict:
    """Per 1,000 rollout tokens, wall and CPU: the update without its generate call, its gc.collect share, and
    the update without it; rollout tokens per second of the generate calls."""
    out: dict = {"updates_timed": n, "rollout_tokens": tokens}
    for i, kind in enumerate(("s", "cpu_s")):
        rest = sum(u[i] for u in updates) - sum(g[i] for g in gen)
        out[f"rollout_tokens_per_{kind}"] = round(tokens / sum(g[i] for g in gen), 1)
        out[f"update_{kind}_per_1k_tokens"] = round(1000 * rest / tokens, 4)
        out[f"gc_{kind}_per_1k_tokens"] = round(1000 * gc[i] / tokens, 4)
        out[f"update_without_gc_{kind}_per_1k_tokens"] = round(1000 * (rest - gc[i]) / tokens, 4)
    return out


def trl_ppo(root: Path, batch: int, updates: int) -> dict:
    """TRL's PPO trainer for `updates` updates on the same models and batch; runs in the child (see `_child`)."""
    import transformers
    import trl
    import trl.experimental.ppo.ppo_trainer as trl_module
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(1)
    given = json.loads((root / "trl_prompts.json").read_text())
    prompts, pad_id = given["prompts"][:batch], given["pad_id"]
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
    s = settings(batch)["trl"]
    args = PPOConfig(output_dir=str(root / f"trl-{batch}"), per_device_train_batch_size=s["per_device_train_batch_size"],
                     gradient_accumulation_steps=s["gradient_accumulation_steps"], num_mini_batches=MINI_BATCHES, num_ppo_epochs=PPO_EPOCHS,
                     total_episodes=batch * updates, response_length=NEW, local_rollout_forward_batch_size=batch,
                     temperature=1.0, learning_rate=1e-5, kl_coef=0.01, kl_estimator="k1", stop_token_id=None,
                     missing_eos_penalty=None, num_sample_generations=0, report_to=[], save_strategy="no",
                     logging_steps=10**6, disable_tqdm=True, use_cpu=True, seed=0, bf16=False, fp16=False)
    gen: list[tuple[float, float]] = []
    gc_s: list[tuple[int, float, float]] = []  # (update interval it ran in, wall, CPU)
    marks: list[tuple[float, float]] = []
    real_gen, real_gc = trl_module.batch_generation, trl_module.gc

    class TimedGC:  # stands in for the `gc` module inside TRL's trainer: its collect() calls are timed
        def __getattr__(self, name):
            return getattr(real_gc, name)

        @staticmethod
        def collect(*a, **k):
            t0 = _now()
            out = real_gc.collect(*a, **k)
            t1 = _now()
            gc_s.append((len(marks), t1[0] - t0[0], t1[1] - t0[1]))
            return out

    class Marks(transformers.TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append(_now())

        def on_step_end(self, *a, **k):
            marks.append(_now())

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=scorer(),
                         value_model=scorer(), train_dataset=data, eval_dataset=data, callbacks=[Marks()])
    steps: list[int] = []  # optimizer steps taken (accelerate skips the ones inside an accumulation)
    base = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    base.register_step_post_hook(lambda *a: steps.append(1))
    trl_module.batch_generation, trl_module.gc = _timed(real_gen, gen), TimedGC()
    try:
        trainer.train()
    finally:
        trl_module.batch_generation, trl_module.gc = real_gen, real_gc
    update_s = _spans(marks)[1:]  # the first update warms up
    # a gc call belongs to the interval it ran in: those between marks 1 and the last (the timed updates)
    timed = [g for g in gc_s if 2 <= g[0] <= len(marks) - 1]
    out = _rates(batch * NEW * len(update_s), gen[1:], update_s, (sum(g[1] for g in timed), sum(g[2] for g in timed)),
                 len(update_s))
    return {**out, "rm_tokens_per_row": PROMPT + NEW, "gc_calls_per_update": len(gc_s) / updates, "optimizer_steps_per_update": len(steps) / updates,
            "trl": trl.__version__, "trl_path": trl.__file__}


def _child(side: str, root: Path, batch: int, updates: int) -> dict:
    """One side's run in a fresh process (TRL's with TRL_PPO first on sys.path): neither side inherits the
    other's memory, threads or live objects (which TRL's gc.collect walks)."""
    if side == "trl" and not (TRL_PPO / "trl").is_dir():
        return {"skipped": f"no trl=={TRL_PPO_VERSION} at {TRL_PPO}; install it with `pip install --no-deps --target "
                           f"{TRL_PPO} trl=={TRL_PPO_VERSION}` (`make bench` does)"}
    paths = ([str(TRL_PPO)] if side == "trl" else []) + [str(REPO / "src"), str(REPO)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TRL_EXPERIMENTAL_SILENCE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = root / f"{side}-{batch}.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_ppo", "--child", side, str(root), str(batch),
                           str(updates), str(out)], env=env, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"failed": done.stderr[-2000:]}
    return json.loads(out.read_text())


def _median_range(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 2), "min": round(min(xs), 2), "max": round(max(xs), 2)}


def _fmt(r: dict) -> str:
    return f"{r['median']}x [{r['min']}-{r['max']}]"


def _ratios(mine: dict, theirs: dict) -> dict[str, float]:
    """ilm over TRL for rollout speed, TRL over ilm for update time (> 1: ilm faster), wall and CPU."""
    out = {}
    for kind, tag in (("s", ""), ("cpu_s", "_cpu")):
        out[f"rollout{tag}_ilm_over_trl"] = mine[f"rollout_tokens_per_{kind}"] / theirs[f"rollout_tokens_per_{kind}"]
        out[f"update{tag}_trl_over_ilm"] = theirs[f"update_{kind}_per_1k_tokens"] / mine[f"update_{kind}_per_1k_tokens"]
        out[f"update{tag}_trl_without_gc_over_ilm"] = (theirs[f"update_without_gc_{kind}_per_1k_tokens"]
                                                       / mine[f"update_{kind}_per_1k_tokens"])
    return out


def _cpu_ms(fn, reps: int) -> float:
    """CPU milliseconds per call of `fn`, after one untimed call."""
    fn()
    t = time.process_time()
    for _ in range(reps):
        fn()
    return 1000 * (time.process_time() - t) / reps


def _fwd_bwd(model, x: torch.Tensor, hf: bool) -> None:
    """One PPO mini-batch's forward + backward: log-softmax over the response positions."""
    logits = model(x).logits if hf else model(x)
    logits[:, PROMPT - 1 : -1].float().log_softmax(-1).mean().backward()


def _decode_step(model, batch: int, hf: bool):
    """One decode step of the whole batch over a prompt-long KV cache (a fresh cache per call of this)."""
    from ilm.model.cache import KVCache

    ids = torch.randint(0, 512, (batch, PROMPT), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if hf:
            past = model(ids, use_cache=True).past_key_values
            return functools.partial(torch.no_grad()(model), ids[:, -1:], past_key_values=past, use_cache=True)
        cache = KVCache(model.config, batch, PROMPT + 1024, torch.device("cpu"), torch.float32)
        model(ids, cache=cache)
    return functools.partial(torch.no_grad()(model), ids[:, -1:], cache=cache)


def _aten_calls(fn) -> int:
    """How many aten operator calls one call of `fn` dispatches (forward and backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.calls


def model_passes(root: Path, rounds: int = 5, reps: int = 20) -> dict:
    """The ceiling of any matched-work speed-up: one PPO mini-batch's forward + backward (the update's unit of
    work, prompt + response tokens, log-softmax over the response positions) and one decode step with a KV cache,
    on ilm's model and on the HF Llama export TRL runs, same weights, shapes, fp32, 1 thread; and one decode
    step's draw from (rows, 512) probabilities, ilm's `draw` against `torch.multinomial` (what transformers'
    sampler calls); alternating per round, CPU milliseconds per call, median over rounds."""
    import transformers

    from ilm.model.generate import draw
    from ilm.model.hf import load_checkpoint

    torch.set_num_threads(1)
    models = {"ilm": load_checkpoint(root / "actor"), "hf": transformers.LlamaForCausalLM.from_pretrained(root / "llama")}
    out: dict = {}
    for b in BATCHES:
        rows = b // MINI_BATCHES
        x = torch.randint(0, 512, (rows, PROMPT + NEW), generator=torch.Generator().manual_seed(b))
        probs = torch.randn(b, 512, generator=torch.Generator().manual_seed(2)).softmax(-1)
        gen = torch.Generator().manual_seed(3)
        cases = {"mini-batch forward + backward": (rows, reps), "decode step": (b, reps),
                 "sampler draw (multinomial on HF's side)": (b, 25 * reps)}  # name: (rows, calls per timing)
        for name, (n_rows, calls) in cases.items():
            times: dict[str, list[float]] = {"ilm": [], "hf": []}
            for r in range(rounds):
                for side in (("ilm", "hf") if r % 2 == 0 else ("hf", "ilm")):
                    if name.startswith("mini"):
                        fn = functools.partial(_fwd_bwd, models[side], x, side == "hf")
                    elif name.startswith("decode"):
                        fn = _decode_step(models[side], b, side == "hf")  # a fresh cache each round
                    elif side == "ilm":
                        fn = functools.partial(draw, probs, gen)
                    else:
                        fn = functools.partial(torch.multinomial, probs, 1, generator=gen)
                    times[side].append(_cpu_ms(fn, calls))
            a, h = statistics.median(times["ilm"]), statistics.median(times["hf"])
            key = f"{name}, {n_rows} rows"
            out[key] = {"ilm_cpu_ms": round(a, 3), "hf_llama_cpu_ms": round(h, 3), "hf_over_ilm": round(h / a, 3)}
            ops = ""
            if name.startswith("mini"):  # the same kernels? count the aten calls of one pass on each side
                out[key]["aten_calls"] = {side: _aten_calls(functools.partial(_fwd_bwd, models[side], x, side == "hf"))
                                          for side in models}
                ops = f"; aten calls per pass ilm {out[key]['aten_calls']['ilm']}, HF {out[key]['aten_calls']['hf']}"
            print(f"model pass, {key}: ilm {a:.3f} ms, HF Llama {h:.3f} ms (CPU, median of {rounds} alternating "
                  f"rounds): HF/ilm {h / a:.2f}x{ops}", flush=True)
    return out


def main() -> dict:
    updates = {16: 3, 64: 2} if QUICK else {16: 5, 64: 3}  # timed updates per run (+1 warm-up)
    rounds = 2 if QUICK else ROUNDS
    out: dict = {"model": "tiny (hidden 64, 2 layers, vocab 512)", "rounds": rounds,
                 "settings": {b: settings(b) for b in BATCHES}, "runs": [], "load_average": []}
    for b in BATCHES:
        print(f"settings at {b} queries per update:\n  ilm: {json.dumps(settings(b)['ilm'])}\n"
              f"  TRL: {json.dumps(settings(b)['trl'])}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _setup(root)
        out["model_passes"] = model_passes(root)
        for r in range(rounds):
            for i, b in enumerate(BATCHES):
                order = ("ilm", "trl") if (r + i) % 2 == 0 else ("trl", "ilm")
                load = os.getloadavg()[0]
                res = {side: _child(side, root, b, updates[b] + 1) for side in order}
                run = {"round": r + 1, "batch": b, "order": list(order), "load_1min": round(load, 2), **res}
                out["runs"].append(run)
                out["load_average"].append(round(load, 2))
                mine, theirs = res["ilm"], res["trl"]
                if "rollout_tokens_per_s" not in mine:
                    raise RuntimeError(f"ilm's side failed: {mine}")
                line = (f"round {r + 1}, {b} queries, {' then '.join(order)}, load {load:.2f}: ilm rollout "
                        f"{mine['rollout_tokens_per_s']:,} tok/s, update {mine['update_s_per_1k_tokens']} s "
                        f"({mine['update_cpu_s_per_1k_tokens']} CPU s) per 1k tokens, RM input "
                        f"{mine['rm_tokens_per_row']} tokens/row")
                if "rollout_tokens_per_s" in theirs:
                    run.update(_ratios(mine, theirs))
                    line += (f"; TRL rollout {theirs['rollout_tokens_per_s']:,} tok/s, update "
                             f"{theirs['update_s_per_1k_tokens']} s ({theirs['update_cpu_s_per_1k_tokens']} CPU s), "
                             f"of it gc.collect {theirs['gc_s_per_1k_tokens']} s, RM input {PROMPT + NEW} tokens/row")
                else:
                    line += f"; TRL: {next(iter(theirs.values()))[:300]}"
                print(line, flush=True)
    for b in BATCHES:
        runs = [x for x in out["runs"] if x["batch"] == b and "rollout_ilm_over_trl" in x]
        if not runs:
            continue
        summary = {k: _median_range([x[k] for x in runs]) for k in runs[0] if k.endswith(("_over_trl", "_over_ilm"))}
        out[f"summary_{b}"] = summary
        print(f"{b} queries per update, {len(runs)} interleaved rounds (median [range]; load average "
              f"{min(out['load_average'])}-{max(out['load_average'])}):\n"
              f"  rollout tokens/s ilm/TRL {_fmt(summary['rollout_ilm_over_trl'])} wall, "
              f"{_fmt(summary['rollout_cpu_ilm_over_trl'])} CPU\n"
              f"  update time TRL/ilm with TRL's gc.collect {_fmt(summary['update_trl_over_ilm'])} wall, "
              f"{_fmt(summary['update_cpu_trl_over_ilm'])} CPU; without it "
              f"{_fmt(summary['update_trl_without_gc_over_ilm'])} wall, "
              f"{_fmt(summary['update_cpu_trl_without_gc_over_ilm'])} CPU", flush=True)
    return out


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(f"python -m benchmarks.bench_ppo   (or: python -m benchmarks.run bench_ppo)\n{__doc__}\n"
              "--passes: only the model-pass comparison (ilm's model against the HF Llama export).\n"
              "Environment: ILM_BENCH_ROUNDS (default 3), ILM_BENCH_QUICK=1 (2 rounds, fewer updates), ILM_TRL_PPO "
              f"(TRL's directory, default {TRL_PPO}).")
    elif sys.argv[1:2] == ["--passes"]:  # the model-pass comparison alone
        with tempfile.TemporaryDirectory() as tmp:
            _setup(Path(tmp))
            print(json.dumps(model_passes(Path(tmp)), indent=2))
    elif sys.argv[1:2] == ["--child"]:
        side, where, batch, n, dest = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
        Path(dest).write_text(json.dumps((ours if side == "ilm" else trl_ppo)(where, batch, n)))
    else:
        print(json.dumps(main(), indent=2))
