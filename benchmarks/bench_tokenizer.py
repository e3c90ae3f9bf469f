"""Tokenizer, side by side with tiktoken's cl100k on the same text:

1. compression (characters per token) on English prose, Chinese prose and Python code
   -- targets: Chinese >= 1.5x cl100k, English and code within 3%;
2. encode throughput (MB of UTF-8 per second), one long text and a batch of documents (all cores):
   ilm's encoder (`tok.encode` / `tok.encode_batch`: tiktoken's engine on ilm's ranks, `fast.py`) side
   by side with tiktoken cl100k (`encode_ordinary` / `encode_ordinary_batch`), and, for reference,
   the same vocabulary on HF `tokenizers` (what ilm encoded with before);
3. build time of the released 92,544 layout and of the 8,192 CPU layout.

Texts: tests/tokenizer/data (English and Chinese prose written for ilm), Python's reference manual
(`pydoc_data.topics`, English) and stdlib modules (code): all ship with the repo or the interpreter.
Throughput rounds alternate ilm / tiktoken / HF and keep each one's best, so background load hits all
alike (ILM_BENCH_ROUNDS sets the number of rounds).
"""

from __future__ import annotations

import os
import sysconfig
import tempfile
import time
from pathlib import Path

from ilm.tokenizer import build_tokenizer
from ilm.tokenizer.base import cl100k_reference

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"
DATA = Path(__file__).resolve().parent.parent / "tests" / "tokenizer" / "data"
CODE_MODULES = ("argparse", "dataclasses", "json/decoder", "textwrap", "typing", "inspect", "pathlib/__init__",
                "pathlib", "collections/__init__", "functools", "logging/__init__", "subprocess", "ast",
                "tarfile", "zipfile/__init__", "zipfile", "email/message", "http/client", "asyncio/base_events")


def texts() -> dict[str, str]:
    from pydoc_data import topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = "\n".join((stdlib / f"{m}.py").read_text() for m in CODE_MODULES if (stdlib / f"{m}.py").exists())
    english = (DATA / "en_prose.txt").read_text() + "\n" + "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    return {"english": english, "chinese": (DATA / "zh_prose.txt").read_text(), "code": code}


def compression(tok, ref, corpus: dict[str, str]) -> dict:
    out = {}
    for name, text in corpus.items():
        ours = len(text) / len(tok.encode(text))
        theirs = len(text) / len(ref.encode_ordinary(text))
        out[name] = {"chars": len(text), "ilm_chars_per_token": round(ours, 3),
                     "cl100k_chars_per_token": round(theirs, 3), "ratio": round(ours / theirs, 4)}
    return out


def _best_mb_s(fns: dict, nbytes: int, rounds: int) -> dict[str, float]:
    best = {k: 0.0 for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = max(best[name], nbytes / 1e6 / (time.perf_counter() - t))
    return best


def throughput(tok, ref, corpus: dict[str, str]) -> dict:
    from ilm.tokenizer.hf import split_for_parallel

    mixed = corpus["english"] + corpus["code"] + corpus["chinese"] * 20
    docs = [d for d in mixed.split("\n\n") if d.strip()]
    nbytes = len(mixed.encode())
    threads = os.cpu_count() or 1
    rounds = int(os.environ.get("ILM_BENCH_ROUNDS", "2" if QUICK else "7"))
    hf = tok._plain  # the same vocabulary on HF `tokenizers`, as ilm encoded before (cut + Rust threads)
    hf_batch = getattr(hf, "encode_batch_fast", hf.encode_batch)
    assert tok.backend == "tiktoken", tok.encoder_note
    assert tok.encode(mixed) == hf_batch([mixed], add_special_tokens=False)[0].ids  # same ids, or no comparison
    single = _best_mb_s({
        "ilm": lambda: tok.encode(mixed),
        "tiktoken": lambda: ref.encode_ordinary(mixed),
        "hf": lambda: hf_batch(split_for_parallel(mixed, 4 * threads), add_special_tokens=False),
    }, nbytes, rounds)
    doc_bytes = sum(len(d.encode()) for d in docs)
    batched = _best_mb_s({
        "ilm": lambda: tok.encode_batch(docs),
        "tiktoken": lambda: ref.encode_ordinary_batch(docs, num_threads=threads),
        "hf": lambda: hf_batch(docs, add_special_tokens=False),
    }, doc_bytes, rounds)
    return {"mb": round(nbytes / 1e6, 2), "documents": len(docs), "threads": threads, "rounds": rounds,
            "single": {k: round(v, 2) for k, v in single.items()},
            "batched": {k: round(v, 2) for k, v in batched.items()},
            "single_ratio": round(single["ilm"] / single["tiktoken"], 3),
            "batched_ratio": round(batched["ilm"] / batched["tiktoken"], 3)}


def main() -> dict:
    ref = cl100k_reference()
    corpus = texts()
    builds = {}
    with tempfile.TemporaryDirectory(prefix="ilm-bench-tok-") as d:
        for size in (92544, 8192):
            t = time.perf_counter()
            tok = build_tokenizer(Path(d) / str(size), vocab_size=size, force=True)
            builds[size] = round(time.perf_counter() - t, 1)
            if size == 92544:
                full = tok
    comp = compression(full, ref, corpus)
    speed = throughput(full, ref, corpus)

    print(f"{'text':<9} {'chars':>9} {'ilm c/tok':>10} {'cl100k c/tok':>13} {'ilm/cl100k':>11}  target")
    targets = {"english": ">= 0.97", "chinese": ">= 1.5", "code": ">= 0.97"}
    for name, row in comp.items():
        print(f"{name:<9} {row['chars']:>9} {row['ilm_chars_per_token']:>10.3f} {row['cl100k_chars_per_token']:>13.3f} "
              f"{row['ratio']:>11.3f}  {targets[name]}")
    print(f"\nencode throughput, MB/s ({speed['mb']} MB mixed text; batch = {speed['documents']} documents, "
          f"{speed['threads']} threads; best of {speed['rounds']} rounds)")
    print(f"{'':<9} {'ilm':>8} {'tiktoken':>9} {'ratio':>7} {'HF tokenizers':>14}")
    for mode in ("single", "batched"):
        print(f"{mode:<9} {speed[mode]['ilm']:>8.2f} {speed[mode]['tiktoken']:>9.2f} {speed[mode + '_ratio']:>7.3f} "
              f"{speed[mode]['hf']:>14.2f}")
    print(f"\nbuild seconds: 92,544 tokens {builds[92544]}, 8,192 tokens {builds[8192]}")
    return {"compression": comp, "throughput": speed, "build_seconds": builds}


if __name__ == "__main__":
    main()
