"""The shared n-gram levels of Gopher repetition give the plain per-n functions' numbers exactly."""

from __future__ import annotations

import numpy as np

from ilm.data.corpus import demo_documents
from ilm.data.quality import _NgramLevels, _token_hashes, dup_ngram_fraction, top_ngram_fraction


def _check(words: list[str], orders: list[list[int]]) -> None:
    th = _token_hashes(words)
    lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    total = int(lens.sum())
    want = {n: (top_ngram_fraction(th, lens, n, total), dup_ngram_fraction(th, lens, n, total)) for n in range(1, 12)}
    for order in orders:
        levels = _NgramLevels(th, lens, total)
        for n in order:
            assert (levels.top(n), levels.dup(n)) == want[n], (n, order, len(words))
        levels = _NgramLevels(th, lens, total)
        for n in order:
            assert levels.dup(n) == want[n][1], (n, order, len(words))


def test_ngram_levels_equal_plain_functions() -> None:
    rng = np.random.default_rng(0)
    orders = [list(range(2, 11)), [2, 3, 4, 5, 6, 7, 8, 9, 10, 2, 7], [10, 9, 5, 2, 4, 3], [1, 6, 11]]
    for vocab in (2, 3, 5, 20, 1000):  # tiny vocabularies: many repeated n-grams and ties
        for size in (0, 1, 2, 3, 9, 10, 11, 50, 400):
            words = [f"w{int(k)}" * (1 + int(k) % 3) for k in rng.integers(0, vocab, size)]
            _check(words, orders)
    docs, _ = demo_documents(n_real=200)
    for d in docs:
        _check(d.text.split(), orders[:1])


def test_token_hashes_are_xxh3_of_each_word() -> None:
    import xxhash

    words = ["a", "b", "a", "é", "\ud800", "", "a b"] * 3
    assert _token_hashes(words).tolist() == [xxhash.xxh3_64_intdigest(w.encode("utf-8", "surrogatepass")) for w in words]
