"""Serving: `ilm serve` side by side with `transformers serve` on the same exported Llama checkpoint, on CPU.

Both servers get the same streamed chat requests (greedy, fixed max_tokens) from the official `openai`
client at 1, 8 and 32 concurrent clients; we report requests/s, output tokens/s and p50/p99 time to first
token. The checkpoint is the `small` preset with random weights (a 2,048-token tokenizer in the InternLM2
layout, whose chat template both servers use). Output tokens are counted from the streamed chunks (one
chunk per token for both servers) and, for ilm, checked against the `usage` it reports.

transformers serve runs as a subprocess with HF_HUB_OFFLINE=1 on the local directory; if it cannot start
here, the reason is recorded in the results instead of its numbers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAX_TOKENS = 32
LEVELS = (1, 8, 32)
QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"


def make_checkpoint(root: Path) -> Path:
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint
    from ilm.tokenizer import build_tokenizer

    tok = build_tokenizer(root / "tok", vocab_size=2048, chinese_words=50_000)
    model = build_model(get_preset("small", vocab_size=tok.vocab_size), seed=0)
    files = {p.name: p.read_bytes() for p in (root / "tok").iterdir() if p.is_file()}
    return save_checkpoint(model, root / "llama", fmt="llama", extra_files=files)


def _prompts(n: int) -> list[str]:
    topics = ["rivers", "mountains", "the sea", "old towns", "trains", "gardens", "bridges", "libraries"]
    return [f"Tell me about {topics[i % len(topics)]}, item {i}." for i in range(n)]


async def _one(client, model: str, prompt: str) -> dict:
    t0 = time.perf_counter()
    first, chunks, usage = None, 0, None
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, temperature=0,
        stream=True, stream_options={"include_usage": True})
    async for ch in stream:
        if getattr(ch, "usage", None) is not None:
            usage = ch.usage.completion_tokens
        if ch.choices and ch.choices[0].delta.content:
            first = first or time.perf_counter()
            chunks += 1
    end = time.perf_counter()
    return {"ttft": (first or end) - t0, "tokens": usage if usage is not None else chunks, "chunks": chunks}


async def _level(url: str, model: str, clients: int, requests: int) -> dict:
    import openai

    c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=1800)
    queue = list(_prompts(requests))
    results: list[dict] = []

    async def worker() -> None:
        while queue:
            results.append(await _one(c, model, queue.pop()))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    await c.close()
    ttft = sorted(r["ttft"] for r in results)
    pct = lambda q: ttft[min(len(ttft) - 1, int(q * len(ttft)))]
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "seconds": round(wall, 3),
            "requests_per_s": round(len(results) / wall, 3), "output_tokens_per_s": round(tokens / wall, 1),
            "output_tokens": tokens, "ttft_p50_s": round(pct(0.5), 4), "ttft_p99_s": round(pct(0.99), 4)}


def _run_levels(url: str, model: str) -> list[dict]:
    rows = []
    for clients in LEVELS:
        requests = max(4, clients) if QUICK else max(8, 2 * clients)
        asyncio.run(_level(url, model, clients, min(clients, 2)))  # warm up
        rows.append(asyncio.run(_level(url, model, clients, requests)))
        print(rows[-1], flush=True)
    return rows


def bench_ilm(ckpt: Path) -> dict:
    from ilm.serve.app import build_app
    from ilm.serve.cli import ServerThread, load_engine

    engine = load_engine(ckpt, max_batch=32, device="cpu")
    try:
        with ServerThread(build_app(engine, "bench")) as srv:
            rows = _run_levels(srv.url, "bench")
    finally:
        engine.stop()
    return {"levels": rows, "engine": engine.stats.as_dict()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_transformers(ckpt: Path, continuous: bool) -> dict:
    exe = Path(sys.executable).with_name("transformers")
    if not exe.exists() and not shutil.which("transformers"):
        return {"error": "the transformers CLI is not installed"}
    port = _free_port()
    cmd = [str(exe if exe.exists() else "transformers"), "serve", str(ckpt), "--host", "127.0.0.1", "--port",
           str(port), "--device", "cpu", "--dtype", "float32", "--log-level", "warning",
           "--continuous-batching" if continuous else "--no-continuous-batching"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (the server writes to it until the finally below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                log.seek(0)
                return {"error": f"transformers serve exited with {proc.returncode}: {log.read()[-2000:]}",
                        "command": " ".join(cmd)}
            try:
                urllib.request.urlopen(url + "/health", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    return {"error": "transformers serve did not answer /health within 300 s"}
                time.sleep(0.5)
        try:
            rows = _run_levels(url, str(ckpt))
        except Exception as err:  # noqa: BLE001 (record why the other server failed; ours stays measured)
            log.seek(0)
            return {"error": f"{type(err).__name__}: {err}", "log": log.read()[-2000:], "command": " ".join(cmd)}
        return {"levels": rows, "command": " ".join(cmd)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main() -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp))
        results: dict = {"model": "small preset (random weights), Llama layout, float32, CPU",
                         "max_tokens": MAX_TOKENS, "torch_threads": torch.get_num_threads()}
        results["ilm"] = bench_ilm(ckpt)
        results["transformers"] = bench_transformers(ckpt, continuous=False)
        results["transformers_cb"] = bench_transformers(ckpt, continuous=True)
    for key in ("transformers", "transformers_cb"):
        other = results[key]
        if "levels" in other:
            results[f"ratio_vs_{key}"] = [
                {"clients": a["clients"],
                 "output_tokens_per_s": round(a["output_tokens_per_s"] / max(b["output_tokens_per_s"], 1e-9), 2),
                 "requests_per_s": round(a["requests_per_s"] / max(b["requests_per_s"], 1e-9), 2),
                 "ttft_p50": round(b["ttft_p50_s"] / max(a["ttft_p50_s"], 1e-9), 2)}
                for a, b in zip(results["ilm"]["levels"], other["levels"])]
    print(_table(results))
    return results


def _table(results: dict) -> str:
    lines = ["| server | clients | requests/s | output tokens/s | TTFT p50 (s) | TTFT p99 (s) |",
             "|---|---|---|---|---|---|"]
    for key, label in (("ilm", "ilm serve"), ("transformers", "transformers serve"),
                       ("transformers_cb", "transformers serve --continuous-batching")):
        r = results.get(key, {})
        if "levels" not in r:
            lines.append(f"| {label} | - | failed: {str(r.get('error', '?')).splitlines()[0][:120]} | | | |")
            continue
        for row in r["levels"]:
            lines.append(f"| {label} | {row['clients']} | {row['requests_per_s']} | {row['output_tokens_per_s']} | "
                         f"{row['ttft_p50_s']} | {row['ttft_p99_s']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
