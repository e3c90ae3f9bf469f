"""Throughput under load: the demo's task-SFT step (the `tiny` model, 16 rows x 256 tokens, AdamW) with
OpenMP threads spin-waiting (OMP_WAIT_POLICY=ACTIVE, libgomp's default before ilm set one) against
sleeping (PASSIVE, what `import ilm` now sets), alone and beside two CPU-burning neighbour processes.

Each measurement is a child process (OpenMP reads the policy when torch loads it) running steps for a
fixed time at torch's default thread count; the two policies run interleaved A,B,B,A in each condition.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"
SECONDS = 4.0 if QUICK else 8.0
BURN = "while True: pass"


def child(seconds: float) -> dict:
    import torch

    from ilm.model import build_model, get_preset

    cfg = get_preset("tiny", max_position_embeddings=256)
    model = build_model(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(3, cfg.vocab_size, (16, 256))

    def step() -> None:
        model(ids, labels=ids).backward()
        opt.step()
        opt.zero_grad()

    step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return {"tokens_per_s": n * ids.numel() / (time.perf_counter() - t0), "steps": n,
            "threads": torch.get_num_threads(), "policy": os.environ.get("OMP_WAIT_POLICY")}


def measure(policy: str) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_load", "--child", str(SECONDS)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> dict:
    results = {}
    for neighbours in (0, 2):
        burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(neighbours)]
        try:
            time.sleep(0.5 if neighbours else 0)
            runs: dict[str, list[float]] = {"ACTIVE": [], "PASSIVE": []}
            load = []
            for policy in ("ACTIVE", "PASSIVE", "PASSIVE", "ACTIVE"):
                r = measure(policy)
                runs[policy].append(round(r["tokens_per_s"]))
                load.append(os.getloadavg()[0])
                print(f"neighbours {neighbours}  OMP_WAIT_POLICY={policy:<7} threads {r['threads']}  "
                      f"{r['tokens_per_s']:>9,.0f} tokens/s ({r['steps']} steps)", flush=True)
        finally:
            for b in burners:
                b.terminate()
                b.wait()
        ratios = [p / a for p in runs["PASSIVE"] for a in runs["ACTIVE"]]
        results[f"neighbours_{neighbours}"] = {
            "tokens_per_s": runs, "passive_over_active_median": round(statistics.median(ratios), 2),
            "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
            "load_average_1min": [round(x, 1) for x in load]}
        print(f"neighbours {neighbours}: PASSIVE / ACTIVE median {results[f'neighbours_{neighbours}']['passive_over_active_median']}x "
              f"(range {results[f'neighbours_{neighbours}']['ratio_range']}), 1-min load {load[0]:.1f}-{load[-1]:.1f}",
              flush=True)
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(float(sys.argv[2]))))
    else:
        main()
