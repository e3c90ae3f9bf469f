"""MinHash internals: the vectorised shingles equal the reference sets, the estimator is unbiased, the
seed's 14 x 9 banding is what the FP+FN criterion picks, and union-find matches a plain one."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ilm.data import minhash as mh
from ilm.data import shingle as sh


def _unique_sets(texts: list[str]) -> list[np.ndarray]:
    h, counts = mh.shingle_hashes(texts)
    off = np.concatenate([[0], np.cumsum(counts)])
    return [np.unique(h[off[i] : off[i + 1]]) for i in range(len(texts))]


def test_vectorised_shingles_match_reference(real_texts: list[str]) -> None:
    extra = ["", "one two", "A  b\tc\nd e f", "Ünïcödé wörds, and ‘quotes’ — dashes", "这是一个中文句子，用于测试去重。今天天气很好，我们去公园散步。",
             "x" * 5000 + " tail words here", "snake_case and CamelCase 42 3.14"]
    texts = real_texts[:300] + extra
    for t, hs in zip(texts, _unique_sets(texts)):
        ref = mh.shingles(t)
        assert hs.size == len(ref), repr(t[:60])
    # exact Jaccard from hashes equals exact Jaccard of reference sets (word and Chinese character grams)
    a, b = real_texts[5], real_texts[5].replace(" the ", " a ", 3)
    ha, hb = _unique_sets([a, b])
    ref_j = len(mh.shingles(a) & mh.shingles(b)) / len(mh.shingles(a) | mh.shingles(b))
    assert abs(np.intersect1d(ha, hb).size / np.union1d(ha, hb).size - ref_j) < 1e-12
    assert mh.is_cjk(extra[4]) and all(len(s) == 5 for s in mh.shingles(extra[4]))


def test_huge_document_chunking_matches_single_pass(real_texts: list[str]) -> None:
    big = " ".join(real_texts[:400])
    # the huge-document path hashes 1 MB pieces cut at spaces: the same set as one pass over the text
    s1 = sh._huge_doc(big.lower().encode(), 5)
    s2 = sh._spaced_group([(0, big.lower().encode())], 5)[0][1]
    assert s1.size > 10_000 and np.array_equal(np.unique(s1), np.unique(s2))


def test_estimator_unbiased_with_binomial_spread() -> None:
    rng = np.random.default_rng(0)
    for j in (0.3, 0.5, 0.7, 0.9):
        errs = []
        for _ in range(200):
            n = 150
            inter = round(2 * n * j / (1 + j))
            common = rng.integers(0, 2**63, inter, dtype=np.uint64)
            a = np.concatenate([common, rng.integers(0, 2**63, n - inter, dtype=np.uint64)])
            b = np.concatenate([common, rng.integers(0, 2**63, n - inter, dtype=np.uint64)])
            s = mh.minhash_from_hashes(np.concatenate([a, b]), np.array([n, n]))
            errs.append(mh.jaccard_estimate(s[0], s[1]) - inter / (2 * n - inter))
        e = np.array(errs)
        sd = np.sqrt(j * (1 - j) / 128)
        assert abs(e.mean()) < 3 * sd / np.sqrt(len(e)) + 0.003
        assert 0.75 * sd < e.std() < 1.25 * sd


def test_seed_banding_is_14_by_9() -> None:
    assert mh.optimal_bands(0.7, 128) == (14, 9)
    p = mh.candidate_probability(np.array([0.5, 0.7, 0.9]), 14, 9)
    assert p[0] < 0.03 and 0.4 < p[1] < 0.5 and p[2] > 0.99


def test_empty_documents_get_sentinel_signature() -> None:
    sig = mh.signatures(["", "   ", "some words here and more words"])
    assert (sig[0] == mh.EMPTY).all() and (sig[1] == mh.EMPTY).all() and not (sig[2] == mh.EMPTY).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60))))
def test_union_find_matches_plain(case: tuple[int, list[tuple[int, int]]]) -> None:
    n, edges = case
    ref = list(range(n))

    def find(x: int) -> int:
        while ref[x] != x:
            x = ref[x]
        return x

    for u, v in edges:
        ru, rv = find(u), find(v)
        if ru != rv:
            ref[max(ru, rv)] = min(ru, rv)
    u = np.array([e[0] for e in edges], dtype=np.int64)
    v = np.array([e[1] for e in edges], dtype=np.int64)
    got = mh.union(np.arange(n, dtype=np.int64), u, v)
    assert [find(i) for i in range(n)] == got.tolist()


def test_seed_numbers_are_the_step_defaults() -> None:
    from ilm.data.dedup import MinHashDedup

    s = MinHashDedup()
    assert (s.ngram, s.num_perm, s.threshold, s.bands, s.rows) == (5, 128, 0.7, 14, 9)
    assert (s.bands, s.rows) == mh.optimal_bands(s.threshold, s.num_perm)
