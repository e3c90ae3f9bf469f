"""Long context: passkey extrapolation (examples/passkey.py). A tiny model trained at window W = 128 on passkey
retrieval, evaluated by NIAH at W, 2W and 4W with dynamic NTK (factor 2.0) and with plain RoPE, the same
weights. Prints the hit rate per length for both and returns the grids.

`ILM_BENCH_QUICK=1` trains fewer steps and asks fewer needles; `ILM_BENCH_DIR=DIR` keeps the run;
`ILM_BENCH_SEED=N` picks the seed; `ILM_BENCH_IMG=PATH` copies the heatmaps there (docs/img/passkey-niah.png).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

QUICK = os.environ.get("ILM_BENCH_QUICK") == "1"


def main() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for examples/
    from examples.passkey import experiment, print_table

    out = Path(os.environ.get("ILM_BENCH_DIR") or tempfile.mkdtemp(prefix="bench-passkey-"))
    img = os.environ.get("ILM_BENCH_IMG")
    s = experiment(out, window=128, steps=300 if QUICK else 1500, seed=int(os.environ.get("ILM_BENCH_SEED", "0")),
                   trials=2 if QUICK else 4, img=Path(img) if img else None)
    print_table(s)
    return s


if __name__ == "__main__":
    main()
