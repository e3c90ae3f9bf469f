"""Serving: `ilm serve` side by side with `transformers serve --continuous-batching` on the same exported Llama
checkpoint, on CPU, interleaved.

Both servers run as subprocesses for the whole benchmark, with the same torch thread count (OMP_NUM_THREADS,
1 unless ILM_BENCH_THREADS says otherwise).
The load generator runs in this process and is the same for both: plain asyncio HTTP/1.0 requests in the
OpenAI chat format, server-sent events parsed line by line (the official `openai` client's per-chunk
objects cost enough CPU, on cores it shares with the servers, to cap what a fast server can show). Every request is a chat completion, greedy, `max_tokens` 64, a short distinct prompt;
N clients each send requests back to back. For every client count (1 / 8 / 32 / 64) and both modes
(streamed, non-streamed), after a warm-up of each server, the two servers take turns A, B, B, A, A, B, ...
(6 rounds each of max(8, 2 x clients) requests, the order flipped every round) on the same requests; we report per server the median output
tokens/s over its rounds and the p50/p99 time to the first token (streamed: to the first content chunk;
non-streamed: to the whole answer, which is when a non-streamed client sees its first token), pooled over
its rounds; and the ratio ilm / transformers of output tokens/s per round pair (median and range). Output
tokens are the `usage.completion_tokens` each server reports (for streams without usage: content chunks).
The machine's load average is recorded at every round. On a shared, loaded machine the wall-clock rates
swing by 3-10x from one round to the next (the same server, same requests), so we also report each server's
CPU time (user + system, all threads of its process and of the processes it spawned, from /proc) per
output token: the work it spent, which other jobs on the machine do not inflate nearly as much.

The checkpoint is the `small` preset (7M parameters) with random weights in the Llama layout, float32, and
a 2,048-id tokenizer in the InternLM2 layout whose chat template both servers apply. transformers serve runs
with HF_HUB_OFFLINE=1 on the local directory and its continuous-batching defaults; if it cannot start, the
reason is recorded instead of its numbers. `ILM_BENCH_QUICK=1`: 1 and 8 clients, one round, 16 tokens;
`ILM_BENCH_LEVELS=32,64` picks the client counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"
MAX_TOKENS = 16 if QUICK else 64
LEVELS = tuple(int(x) for x in os.environ["ILM_BENCH_LEVELS"].split(",")) if os.environ.get("ILM_BENCH_LEVELS") \
    else (1, 8) if QUICK else (1, 8, 32, 64)
ROUNDS = 1 if QUICK else 6  # per server, per (clients, mode): A, B, B, A, A, B, ...
MAX_BATCH = 64
# torch threads per server: 1 by default; for a 7M-parameter model on shared cores intra-op threads cost more
# than they give (A/B on this machine, ilm serve: 1 thread 1,071 / 2,370 tokens/s at 8 / 32 streamed clients,
# 2 threads 854 / 1,881, and more CPU per token)
THREADS = os.environ.get("ILM_BENCH_THREADS", "1")


def make_checkpoint(root: Path) -> Path:
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint
    from ilm.tokenizer import build_tokenizer

    tok = build_tokenizer(root / "tok", vocab_size=2048, chinese_words=50_000)
    model = build_model(get_preset("small", vocab_size=tok.vocab_size), seed=0)
    files = {p.name: p.read_bytes() for p in (root / "tok").iterdir() if p.is_file()}
    return save_checkpoint(model, root / "llama", fmt="llama", extra_files=files)


def _prompts(n: int, offset: int) -> list[str]:
    topics = ["rivers", "mountains", "the sea", "old towns", "trains", "gardens", "bridges", "libraries"]
    return [f"Tell me about {topics[i % len(topics)]}, item {offset + i}." for i in range(n)]


async def _one(port: int, model: str, prompt: str, stream: bool) -> dict:
    """One chat completion over a fresh HTTP/1.0 connection (so the body comes unframed until the server
    closes), read with asyncio streams: a load generator as light as it gets in Python, since it shares the
    machine's cores with the server it measures."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS,
            "temperature": 0}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    data = json.dumps(body).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass
    first, chunks, usage = None, 0, None
    if not stream or status != 200:
        payload = json.loads(await reader.read())
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {payload}")
        usage = payload["usage"]["completion_tokens"]
    else:
        while line := await reader.readline():
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]["completion_tokens"]
            choices = event.get("choices")
            if choices and choices[0].get("delta", {}).get("content"):
                first = first or time.perf_counter()
                chunks += 1
    writer.close()
    end = time.perf_counter()
    return {"ttft": (first or end) - t0, "tokens": usage if usage is not None else chunks, "seconds": end - t0}


async def _round(url: str, model: str, clients: int, requests: int, stream: bool, offset: int) -> dict:
    port = int(url.rsplit(":", 1)[1])
    queue = _prompts(requests, offset)
    results: list[dict] = []

    async def worker() -> None:
        while queue:
            results.append(await _one(port, model, queue.pop(), stream))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] or 0 for r in results)
    return {"seconds": wall, "tokens": tokens, "ttft": [r["ttft"] for r in results],
            "output_tokens_per_s": tokens / wall, "load": os.getloadavg()[0]}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and all its descendants (all threads), from /proc:
    `transformers serve --continuous-batching` runs its model in a child process it spawns."""
    stats: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    tree, total = {pid}, 0.0
    changed = True
    while changed:
        changed = False
        for p, (ppid, _) in stats.items():
            if ppid in tree and p not in tree:
                tree.add(p)
                changed = True
    for p in tree:
        total += stats.get(p, (0, 0.0))[1]
    return total


def _measured(side: Proc, clients: int, requests: int, stream: bool, offset: int) -> dict:
    """One round against one server, with the CPU time the server process spent on it."""
    before = _cpu_seconds(side.proc.pid)
    out = asyncio.run(_round(side.url, side.model, clients, requests, stream, offset))
    out["server_cpu_s"] = _cpu_seconds(side.proc.pid) - before
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A server subprocess, up once /health answers."""

    def __init__(self, name: str, cmd: list[str], model: str, env: dict):
        self.name, self.cmd, self.model = name, cmd, model
        self.port = int(cmd[cmd.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (the server writes to it until stop())
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_up(self, seconds: float = 600) -> str | None:
        deadline = time.monotonic() + seconds
        while True:
            if self.proc.poll() is not None:
                return f"{self.name} exited with {self.proc.returncode}: {self.tail()}"
            try:
                urllib.request.urlopen(self.url + "/health", timeout=5).read()
                return None
            except OSError:
                if time.monotonic() > deadline:
                    return f"{self.name} did not answer /health within {seconds:.0f} s: {self.tail()}"
                time.sleep(0.5)

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-1500:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _servers(ckpt: Path) -> tuple[Proc, Proc | None, str | None]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=THREADS,
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    ilm = Proc("ilm serve", [sys.executable, "-m", "ilm.cli", "serve", "--checkpoint", str(ckpt), "--port",
                             str(_free_port()), "--model-name", "bench", "--max-batch", str(MAX_BATCH),
                             "--device", "cpu"], "bench", env)
    exe = Path(sys.executable).with_name("transformers")
    exe = str(exe) if exe.exists() else shutil.which("transformers")
    other = None
    if exe is not None:
        other = Proc("transformers serve", [exe, "serve", str(ckpt), "--host", "127.0.0.1", "--port",
                                            str(_free_port()), "--device", "cpu", "--dtype", "float32",
                                            "--log-level", "warning", "--continuous-batching"], str(ckpt), env)
    err = ilm.wait_up()
    if err:
        raise RuntimeError(err)
    why = "the transformers CLI is not installed" if other is None else other.wait_up()
    return ilm, other, why


def _summary(rounds: list[dict]) -> dict:
    ttft = sorted(t for r in rounds for t in r["ttft"])
    pct = lambda q: ttft[min(len(ttft) - 1, int(q * len(ttft)))]
    rates = [r["output_tokens_per_s"] for r in rounds]
    cpu = [1000 * r["server_cpu_s"] / max(r["tokens"], 1) for r in rounds]
    return {"output_tokens_per_s": round(statistics.median(rates), 1), "rounds_tokens_per_s": [round(x, 1) for x in rates],
            "server_cpu_ms_per_token": round(statistics.median(cpu), 3),
            "ttft_p50_s": round(pct(0.5), 4), "ttft_p99_s": round(pct(0.99), 4),
            "tokens_per_round": [r["tokens"] for r in rounds], "load": [round(r["load"], 1) for r in rounds]}


def main() -> dict:
    import torch
    import transformers

    results: dict = {
        "model": "small preset (random weights, 7M parameters), Llama layout, float32, CPU",
        "max_tokens": MAX_TOKENS, "levels": LEVELS, "rounds_per_server": ROUNDS, "omp_num_threads": THREADS,
        "torch": torch.__version__, "transformers": transformers.__version__, "load_at_start": os.getloadavg(),
        "interleaving": "per (clients, mode): warm-up both, then A,B / B,A per round (A = ilm on even rounds)"}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp))
        ilm, other, why = _servers(ckpt)
        try:
            results["ilm_settings"] = {"command": " ".join(ilm.cmd), "max_batch": MAX_BATCH, "max_queue": 256,
                                       "prefill_tokens": 2048, "max_len": "model context (2048)"}
            if why:
                results["transformers_error"] = why
                sides = [ilm]
            else:
                results["transformers_settings"] = {"command": " ".join(other.cmd),
                                                    "continuous_batching": "defaults (paged KV cache)"}
                sides = [ilm, other]
            print({k: v for k, v in results.items()}, flush=True)
            rows = []
            offset = 0
            for stream in (True, False):
                for clients in LEVELS:
                    requests = max(8, 2 * clients)
                    for side in sides:  # warm-up
                        asyncio.run(_round(side.url, side.model, clients, min(clients, 4), stream, 10_000))
                    got: dict[str, list[dict]] = {s.name: [] for s in sides}
                    for r in range(ROUNDS):
                        for side in (sides if r % 2 == 0 else sides[::-1]):
                            got[side.name].append(_measured(side, clients, requests, stream, offset))
                        offset += requests  # a round's prompts are new to both servers
                    row = {"mode": "streamed" if stream else "non-streamed", "clients": clients,
                           "requests_per_round": requests, **{s.name: _summary(got[s.name]) for s in sides}}
                    if len(sides) == 2:
                        ratios = [a["output_tokens_per_s"] / b["output_tokens_per_s"]
                                  for a, b in zip(got[ilm.name], got[other.name])]
                        row["ratio_tokens_per_s"] = {"median": round(statistics.median(ratios), 2),
                                                     "range": [round(min(ratios), 2), round(max(ratios), 2)]}
                        cpu = [(b["server_cpu_s"] / max(b["tokens"], 1)) / max(a["server_cpu_s"] / max(a["tokens"], 1),
                                                                              1e-9)
                               for a, b in zip(got[ilm.name], got[other.name])]
                        row["ratio_cpu_per_token"] = {"median": round(statistics.median(cpu), 2),
                                                      "range": [round(min(cpu), 2), round(max(cpu), 2)]}
                    rows.append(row)
                    print(row, flush=True)
            results["rows"] = rows
        finally:
            ilm.stop()
            if other is not None:
                other.stop()
    results["load_at_end"] = os.getloadavg()
    print(_table(results))
    return results


def _table(results: dict) -> str:
    lines = [("| mode | clients | server | output tokens/s (median) | TTFT p50 (s) | TTFT p99 (s) | server CPU ms / "
              "token | ilm / transformers: tokens/s | transformers / ilm: CPU per token |"),
             "|---|---:|---|---:|---:|---:|---:|---|---|"]

    def rng(r: dict | None) -> str:
        return f"{r['median']}x ({r['range'][0]}-{r['range'][1]})" if r else ""

    for row in results.get("rows", []):
        for name in ("ilm serve", "transformers serve"):
            s = row.get(name)
            if s is None:
                continue
            first = name == "ilm serve"
            lines.append(f"| {row['mode']} | {row['clients']} | {name} | {s['output_tokens_per_s']} | "
                         f"{s['ttft_p50_s']} | {s['ttft_p99_s']} | {s['server_cpu_ms_per_token']} | "
                         f"{rng(row.get('ratio_tokens_per_s')) if first else ''} | "
                         f"{rng(row.get('ratio_cpu_per_token')) if first else ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
