"""MinHash signatures, documents/s on one core: ilm's vectorised MinHash vs datasketch's `MinHash`
(128 permutations, the same word 5-gram shingles), side by side. Target: >= 20x."""

from __future__ import annotations

import time

import numpy as np


def _docs(n: int, words_per_doc: int = 60) -> list[str]:
    from ilm.data.corpus import real_texts

    words = " ".join(real_texts(min_words=60, max_docs=1200)).split()
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(words) - words_per_doc, n)
    return [" ".join(words[s : s + words_per_doc]) for s in starts]


def main() -> dict:
    import os

    from datasketch import MinHash

    from ilm.data import minhash as mh

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    docs = _docs(30_000)
    mh.signatures(docs[:5000])  # warm-up: builds the cached power tables once per process
    t0 = time.perf_counter()
    ours = mh.signatures(docs)
    ours_rate = len(docs) / (time.perf_counter() - t0)

    n_ds = 2000
    t0 = time.perf_counter()
    ds_sigs = []
    for d in docs[:n_ds]:
        m = MinHash(num_perm=128)
        for s in mh.shingles(d):
            m.update(s.encode("utf-8"))
        ds_sigs.append(m)
    ds_rate = n_ds / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for d in docs[:n_ds]:
        m = MinHash(num_perm=128)
        m.update_batch([s.encode("utf-8") for s in mh.shingles(d)])
    ds_batch_rate = n_ds / (time.perf_counter() - t0)

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
        "ilm_docs_per_s": round(ours_rate),
        "datasketch_update_docs_per_s": round(ds_rate),
        "datasketch_update_batch_docs_per_s": round(ds_batch_rate),
        "speedup_vs_update": round(ours_rate / ds_rate, 1),
        "speedup_vs_update_batch": round(ours_rate / ds_batch_rate, 1),
        "mean_abs_err_ilm": round(float(np.mean(np.abs(np.array(ours_j) - true_j))), 4),
        "mean_abs_err_datasketch": round(float(np.mean(np.abs(np.array(ds_j) - true_j))), 4),
    }
    print(f"{'MinHash, 128 perms, 60-word docs, 1 core':<44} {'docs/s':>10} {'ilm speedup':>12}")
    print(f"{'ilm (vectorised numpy)':<44} {res['ilm_docs_per_s']:>10,}")
    print(f"{'datasketch MinHash.update per shingle':<44} {res['datasketch_update_docs_per_s']:>10,} {res['speedup_vs_update']:>11}x")
    print(f"{'datasketch MinHash.update_batch':<44} {res['datasketch_update_batch_docs_per_s']:>10,} {res['speedup_vs_update_batch']:>11}x")
    print(f"mean |J_est - J| on 200 one-word-edit pairs: ilm {res['mean_abs_err_ilm']}, datasketch {res['mean_abs_err_datasketch']}")
    assert ours.shape == (len(docs), 128)
    return res


if __name__ == "__main__":
    main()
