"""MinHash signatures, documents/s on one core: ilm's vectorised MinHash vs datasketch's `MinHash`
(128 permutations, the same shingles: word 5-grams for English, character 5-grams for Chinese), side by
side. Target: >= 20x datasketch's `update_batch`.

The shared machine is noisy, so after one untimed warm-up round of each, ilm and datasketch `update_batch`
are timed in alternation, REPEATS times each, and each rate is the median; the per-shingle `update`
(much slower) is timed once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

REPEATS = 5


def _docs(n: int, words_per_doc: int = 60) -> list[str]:
    from ilm.data.corpus import real_texts

    words = " ".join(real_texts(min_words=60, max_docs=1200)).split()
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(words) - words_per_doc, n)
    return [" ".join(words[s : s + words_per_doc]) for s in starts]


def _zh_docs(n: int, chars: int = 120) -> list[str]:
    """Windows of real Chinese prose (the tokenizer's test text), `chars` characters each."""
    text = (Path(__file__).parent.parent / "tests/tokenizer/data/zh_prose.txt").read_text("utf-8")
    rng = np.random.default_rng(1)
    starts = rng.integers(0, len(text) - chars, n)
    return [text[s : s + chars] for s in starts]


def _datasketch_batch(docs: list[str]) -> None:
    from datasketch import MinHash

    from ilm.data import minhash as mh

    for d in docs:
        m = MinHash(num_perm=128)
        m.update_batch([s.encode("utf-8") for s in mh.shingles(d)])


def _side_by_side(docs: list[str], n_ds: int) -> tuple[float, float, list[float]]:
    """Median docs/s of ilm (all `docs`) and datasketch update_batch (first n_ds), timed alternately."""
    from ilm.data import minhash as mh

    mh.signatures(docs)  # untimed warm-up round of both (first calls pay allocator and cache warm-up)
    _datasketch_batch(docs[:n_ds])
    ours, theirs = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        sig = mh.signatures(docs)
        ours.append(len(docs) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        _datasketch_batch(docs[:n_ds])
        theirs.append(n_ds / (time.perf_counter() - t0))
    assert sig.shape == (len(docs), 128)
    return float(np.median(ours)), float(np.median(theirs)), [o / t for o, t in zip(ours, theirs)]


def main() -> dict:
    from datasketch import MinHash

    from ilm.data import minhash as mh

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    docs = _docs(30_000)
    zh = _zh_docs(10_000)
    assert all(mh.is_cjk(d) for d in zh[:100])
    # the batched path is the simple per-document one, hash for hash
    for sample in (docs[:3000], zh[:1000]):
        h, c = mh.shingle_hashes(sample)
        rh, rc = mh.shingle_hashes_reference(sample)
        assert np.array_equal(c, rc) and np.array_equal(h, rh)
    n_ds = 2000
    ours_rate, ds_batch_rate, ratios = _side_by_side(docs, n_ds)
    t0 = time.perf_counter()
    for d in docs[:n_ds]:
        m = MinHash(num_perm=128)
        for s in mh.shingles(d):
            m.update(s.encode("utf-8"))
    ds_rate = n_ds / (time.perf_counter() - t0)
    zh_ours, zh_ds, zh_ratios = _side_by_side(zh, n_ds)

    # same shingles, same answers: the two estimators agree on near pairs (one word changed)
    pairs = [(d, d.replace(d.split()[30], "zzzz", 1)) for d in docs[:200]]
    ours_j = [mh.jaccard_estimate(*mh.signatures([a, b])) for a, b in pairs]
    ds_j = []
    for a, b in pairs:
        ma, mb = MinHash(num_perm=128), MinHash(num_perm=128)
        ma.update_batch([s.encode() for s in mh.shingles(a)])
        mb.update_batch([s.encode() for s in mh.shingles(b)])
        ds_j.append(ma.jaccard(mb))
    true_j = [len(mh.shingles(a) & mh.shingles(b)) / len(mh.shingles(a) | mh.shingles(b)) for a, b in pairs]
    res = {
        "docs_words": 60,
        "repeats": REPEATS,
        "ilm_docs_per_s": round(ours_rate),
        "datasketch_update_docs_per_s": round(ds_rate),
        "datasketch_update_batch_docs_per_s": round(ds_batch_rate),
        "speedup_vs_update": round(ours_rate / ds_rate, 1),
        "speedup_vs_update_batch": round(ours_rate / ds_batch_rate, 1),
        "speedup_vs_update_batch_per_repeat": [round(r, 1) for r in ratios],
        "zh_docs_chars": 120,
        "zh_ilm_docs_per_s": round(zh_ours),
        "zh_datasketch_update_batch_docs_per_s": round(zh_ds),
        "zh_speedup_vs_update_batch": round(zh_ours / zh_ds, 1),
        "zh_speedup_vs_update_batch_per_repeat": [round(r, 1) for r in zh_ratios],
        "mean_abs_err_ilm": round(float(np.mean(np.abs(np.array(ours_j) - true_j))), 4),
        "mean_abs_err_datasketch": round(float(np.mean(np.abs(np.array(ds_j) - true_j))), 4),
    }
    print(f"{'MinHash, 128 perms, 1 core (median of ' + str(REPEATS) + ')':<48} {'docs/s':>10} {'ilm speedup':>12}")
    print("English, 60-word docs, word 5-grams")
    print(f"{'  ilm (vectorised numpy)':<48} {res['ilm_docs_per_s']:>10,}")
    print(f"{'  datasketch MinHash.update per shingle':<48} {res['datasketch_update_docs_per_s']:>10,} {res['speedup_vs_update']:>11}x")
    print(f"{'  datasketch MinHash.update_batch':<48} {res['datasketch_update_batch_docs_per_s']:>10,} {res['speedup_vs_update_batch']:>11}x")
    print(f"  update_batch speed-up in each repeat: {res['speedup_vs_update_batch_per_repeat']}")
    print("Chinese, 120-character docs, character 5-grams")
    print(f"{'  ilm (vectorised numpy)':<48} {res['zh_ilm_docs_per_s']:>10,}")
    print(f"{'  datasketch MinHash.update_batch':<48} {res['zh_datasketch_update_batch_docs_per_s']:>10,} {res['zh_speedup_vs_update_batch']:>11}x")
    print(f"  update_batch speed-up in each repeat: {res['zh_speedup_vs_update_batch_per_repeat']}")
    print(f"mean |J_est - J| on 200 one-word-edit pairs: ilm {res['mean_abs_err_ilm']}, datasketch {res['mean_abs_err_datasketch']}")
    return res


if __name__ == "__main__":
    main()
