"""Serving's detokenisation cost per output token, by output length: incremental (`ilm.serve.detok`, what the
engine runs on every token) against re-decoding the whole output every token (what it did before).

Output ids are real text (the first 256 tokens of docs/serving.md, encoded with the benchmark tokenizer of
bench_serve, 2,048 ids, byte-level BPE) repeated to 256 / 1k / 2k / 4k / 8k tokens, pushed one id at a time through a chat-mode
`TextTracker` with one stop string (so the stop-string hold-back is measured too). The figure that matters is
the ratio of the per-token cost at 8k to that at 256: flat means ~1x; a whole-output decode grows linearly.
The cost at length n is timed over the last 128 ids before n (the tracker having read the ones before them,
untimed). On this shared machine the same call takes either ~0.4 or ~6 us depending on scheduling (even a
two-id decode is bimodal), so each figure is the minimum over 7 rounds (the median is printed too), the two
ways interleaved, order flipped every round.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

LENGTHS = (256, 1024, 2048, 4096, 8192)
OLD_UP_TO = 8192
ROUNDS = 7
WINDOW = 128  # the per-token cost at length n is timed over the ids n - WINDOW .. n


def _ids(tok, n: int) -> list[int]:
    """The same 256 ids of real text over and over, so every length decodes the same kind of tokens (the cost
    of a token depends on what it is: multi-byte characters wait for their other half)."""
    root = Path(__file__).parents[1]
    block = tok.encode((root / "docs" / "serving.md").read_text())[:256]
    return (block * (n // len(block) + 1))[:n]


def _incremental(tok, ids: list[int]) -> float:
    """Seconds per token for the last WINDOW ids, the tracker having read all the ids before them."""
    from ilm.serve.detok import TextTracker

    tracker = TextTracker(tok, ["<<never>>"])
    for i in ids[:-WINDOW]:
        tracker.push(i)
    t0 = time.perf_counter()
    for i in ids[-WINDOW:]:
        tracker.push(i)
    return (time.perf_counter() - t0) / WINDOW


def _whole(tok, ids: list[int]) -> float:
    """The engine's old way for the last WINDOW ids: decode every id so far, on every id."""
    t0 = time.perf_counter()
    for n in range(len(ids) - WINDOW + 1, len(ids) + 1):
        text = tok.decode(ids[:n], skip_special=True)
        text.find("<<never>>")
    return (time.perf_counter() - t0) / WINDOW


def main() -> dict:
    from ilm.tokenizer import build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(Path(tmp) / "tok", vocab_size=2048, chinese_words=50_000)
    ids = _ids(tok, max(LENGTHS))
    rows = []
    for n in LENGTHS:
        inc, old = [], []
        for r in range(ROUNDS):  # interleaved, order flipped every round
            order = (_incremental, _whole) if r % 2 == 0 else (_whole, _incremental)
            for fn in order:
                if fn is _whole and n > OLD_UP_TO:
                    continue
                (inc if fn is _incremental else old).append(fn(tok, ids[:n]))
        row = {"tokens": n, "incremental_us_per_token": round(min(inc) * 1e6, 2),
               "incremental_median": round(statistics.median(inc) * 1e6, 2)}
        if old:
            row["whole_decode_us_per_token"] = round(min(old) * 1e6, 2)
        rows.append(row)
        print(row, flush=True)
    base = rows[0]["incremental_us_per_token"]
    result = {"rows": rows, "incremental_8k_over_256": round(rows[-1]["incremental_us_per_token"] / base, 2),
              "whole_8k_over_256": round(rows[-1]["whole_decode_us_per_token"] / rows[0]["whole_decode_us_per_token"],
                                         2),
              "tokenizer": "bench_serve's 2,048-id byte-level BPE", "rounds": ROUNDS}
    print(f"per-token cost, 8k vs 256 tokens: incremental {result['incremental_8k_over_256']}x; "
          f"whole-output decode: {result['whole_8k_over_256']}x")
    return result


if __name__ == "__main__":
    main()
