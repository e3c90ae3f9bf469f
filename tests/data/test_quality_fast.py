"""The shared n-gram levels of Gopher repetition give the plain per-n functions' numbers exactly."""

from __future__ import annotations

import numpy as np
import pytest

from ilm.data.corpus import demo_documents
from ilm.data.quality import _NgramLevels, _token_hashes, dup_ngram_fraction, top_ngram_fraction


def _check(words: list[str], orders: list[list[int]]) -> None:
    th = _token_hashes(words)
    lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    for sep in (0, 1):  # CJK tokens touch; spaced words are one separator apart
        total = int(lens.sum()) + sep * max(len(words) - 1, 0)
        want = {n: (top_ngram_fraction(th, lens, n, total, sep), dup_ngram_fraction(th, lens, n, total, sep))
                for n in range(1, 12)}
        for order in orders:
            levels = _NgramLevels(th, lens, total, sep)
            for n in order:
                got = (levels.top(n), levels.dup(n))
                assert got == pytest.approx(want[n], rel=1e-12, abs=0), (n, order, len(words), sep)
            levels = _NgramLevels(th, lens, total, sep)
            for n in order:
                assert levels.dup(n) == pytest.approx(want[n][1], rel=1e-12, abs=0), (n, order, len(words), sep)


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


def _reference_gopher_quality(step, doc) -> object:
    """Gopher's rules written plainly, one token at a time (the filter must agree on every document)."""
    import re

    from ilm.data.base import tokens
    from ilm.data.quality import BULLETS, ELLIPSES, EN_STOP, ZH_STOP, _is_cjk

    text = doc.text
    cjk = _is_cjk(doc)
    toks = tokens(text, cjk)
    words = [w for w in toks if any(c.isalnum() for c in w)]  # symbol-only tokens are not words
    n = len(words)
    if n < step.min_words or n == 0:
        return False, "gopher_too_few_words"
    if n > step.max_words:
        return False, "gopher_too_many_words"
    if not cjk:
        mean = sum(len(w) for w in words) / n
        if not step.min_mean_word_length <= mean <= step.max_mean_word_length:
            return False, "gopher_mean_word_length"
    if text.count("#") / n > step.max_symbol_word_ratio:
        return False, "gopher_symbol_ratio"
    if sum(text.count(e) for e in ELLIPSES) / n > step.max_symbol_word_ratio:
        return False, "gopher_symbol_ratio"
    lines = text.split("\n")
    if sum(ln.strip().startswith(BULLETS) for ln in lines) / len(lines) > step.max_bullet_lines:
        return False, "gopher_bullet_lines"
    if sum(ln.strip().endswith(ELLIPSES) for ln in lines) / len(lines) > step.max_ellipsis_lines:
        return False, "gopher_ellipsis_lines"
    alpha = sum(1 for w in toks if re.search(r"[^\W\d_]", w))
    if alpha / len(toks) < step.min_alpha_words:
        return False, "gopher_alpha_words"
    if cjk:
        stops = {w for w in toks if w in ZH_STOP}
    else:
        stops = {re.sub(r"^[\W_]+|[\W_]+$", "", w).lower() for w in toks} & set(EN_STOP)
    if len(stops) < step.min_stop_words:
        return False, "gopher_stop_words"
    return True


def test_gopher_quality_agrees_with_the_word_by_word_rules() -> None:
    from ilm.data.corpus import ZH_TEXTS
    from ilm.data.document import Document
    from ilm.data.quality import GopherQuality

    docs, _ = demo_documents(n_real=300)
    base = " ".join(["the cat sat on a mat with words"] * 10)
    extra = [base, base.upper(), base.replace("the", "THE"), "\n".join(["- item one two", "• x y z", "  ..."] * 20),
             " ".join(["123", "4.5", "(x)", "—", "_", "ab1"] * 20), "\n".join(["line ends here..."] * 20) + " " + base,
             " ".join(["naïve", "ÉCOLE", "²³", "٣٤", "the", "of"] * 15), *ZH_TEXTS, "的了是" * 40, "x" * 10]
    docs += [Document(f"x{i}", t, "s", 1) for i, t in enumerate(extra)]
    steps = [GopherQuality(), GopherQuality(min_words=5, min_alpha_words=0.5, max_bullet_lines=0.3, min_stop_words=5)]
    seen = set()
    for step in steps:
        for d in docs:
            want = _reference_gopher_quality(step, d)
            assert step.filter(d) == want, d.id
            seen.add(want if want is True else want[1])
    assert len(seen) >= 6  # the cases reach most rules
