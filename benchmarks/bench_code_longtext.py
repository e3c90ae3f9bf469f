"""Code and long-text pipelines (issue 5 numbers in docs/benchmarks.md):

- code pipeline files/s per core on installed packages as real repositories (`pip`, `_pytest`), one worker;
- perplexity-difference filter documents/s with the `tiny` preset (random weights: the cost of scoring does
  not depend on what the model learned) and a small BPE trained on Python's docs, S1 = S2 = 127 tokens.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def bench_code(tmp: Path) -> dict:
    import _pytest
    import pip

    from ilm.data.code import run_code_pipeline

    repos = [Path(pip.__file__).parent, Path(_pytest.__file__).parent]
    t = time.perf_counter()
    ledger = run_code_pipeline(repos, tmp / "code", workers=1)
    dt = time.perf_counter() - t
    files = ledger["code"]["ingest"]["files"]
    mb = ledger["input_bytes"] / 1e6
    return {"repositories": [r.name for r in repos], "files": files, "MB": round(mb, 2), "seconds": round(dt, 2),
            "files_per_s_per_core": round(files / dt, 1), "MB_per_s_per_core": round(mb / dt, 2),
            "kept": ledger["kept_docs"]}


def bench_ppl(tmp: Path) -> dict:
    from ilm.data.corpus import real_texts
    from ilm.data.longtext import PerplexityDifference
    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint
    from ilm.tokenizer import train_tokenizer

    texts = real_texts(min_words=200, max_docs=160)
    (tmp / "corpus.txt").write_text("\n".join(t.replace("\n", " ") for t in texts))
    train_tokenizer([tmp / "corpus.txt"], tmp / "tok", vocab_size=512)
    save_checkpoint(build_model(get_preset("tiny"), seed=0), tmp / "model")
    out = {"documents": len(texts)}
    for batch in (8, 32):
        step = PerplexityDifference(checkpoint=str(tmp / "model"), tokenizer=str(tmp / "tok"),
                                    s1_tokens=127, s2_tokens=127, batch_size=batch)
        step.load()
        step.score(texts[:batch])  # warm-up: first calls pay one-off kernel and allocator set-up
        t = time.perf_counter()
        scored = step.score(texts)
        out[f"docs_per_s_batch_{batch}"] = round(len(texts) / (time.perf_counter() - t), 1)
        out["scored"] = sum(s is not None for s in scored)
    return out


def main() -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = {"code_pipeline": bench_code(tmp), "ppl_filter": bench_ppl(tmp)}
    for k, v in results.items():
        print(k, v)
    return results


if __name__ == "__main__":
    main()
