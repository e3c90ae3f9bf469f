"""The batched shingling path (`minhash.shingle_hashes`) is pinned to the simple per-document one
(`shingle_hashes_reference`) and to digests of what the code gave before it was batched: same hashes,
same order, same signatures (and the batched script detection is `is_cjk`), on English, Chinese, mixed scripts, odd whitespace, NULs, lone surrogates,
Greek final sigma, case-expanding characters, empty and huge documents, and every group boundary."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ilm.data import minhash as mh
from ilm.data import shingle as sh

_EN = [
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "data", "model", "token", "Python's",
    "os.path", "snake_case", "CamelCase", "42", "3.14", "e-mail", "THE", "Dog",
]
_ACC = ["Ünïcödé", "wörds", "café", "naïve", "ΣΟΦΙΑ", "ΟΔΟΣ", "σοφός", "İstanbul", "ǅemal", "straße", "ﬁne", "Ωmega"]
_ZH = list("这是一个中文句子用于测试去重今天天气很好我们去公园散步数据模型训练") + ["日本語", "한국어", "ภาษาไทย"]
_SYM = ["，", "。", "—", "‘", "’", "!", "...", "(", ")", "😀", "\udc80", "\x00", "#", "\u200b", "ΑΣ", "Σ"]
_SP = [" ", " ", " ", "  ", "\n", "\t", "\u3000", "\u00a0", "\u2003", "\r\n", "\x1c"]


def varied_texts(n_docs: int = 400, seed: int = 7) -> list[str]:
    """Deterministic documents: English, accented Latin, Greek, Turkish dotted I, Chinese, Japanese,
    Korean, Thai, mixed scripts, emoji, lone surrogates, NULs, odd whitespace; 0 to ~600 tokens."""
    rng = random.Random(seed)
    out = ["", " ", "\u3000\n", "one", "one two", "a b c d", "a b c d e", "中", "中文", "中文句子测", "x" * 70 + " tail",
           "ΟΔΟΣ\x00ΟΔΟΣ", "中文中文中文ΑΣ", "ΑΣ 中文中文中文", "Σ"]
    for _ in range(n_docs):
        mode = rng.randrange(4)
        toks = []
        for _ in range(rng.choice([1, 2, 3, 4, 5, 6, 9, 30, 120, 300])):
            if mode == 0:
                pool = _EN if rng.random() < 0.85 else _ACC + _SYM
            elif mode == 1:
                pool = _ZH if rng.random() < 0.9 else _SYM + _EN
            elif mode == 2:
                pool = rng.choice([_EN, _ZH, _ACC, _SYM])
            else:
                pool = _ACC if rng.random() < 0.7 else _EN + _SYM
            toks.append(rng.choice(pool))
            toks.append(rng.choice(_SP) if rng.random() < 0.8 else "")
        out.append("".join(toks))
    return out


def _digest(texts: list[str]) -> tuple[str, str]:
    h, c = mh.shingle_hashes(texts)
    sig = mh.signatures(texts)
    return (hashlib.sha256(h.tobytes() + c.astype(np.int64).tobytes()).hexdigest()[:16],
            hashlib.sha256(sig.tobytes()).hexdigest()[:16])


def _assert_same(texts: list[str]) -> None:
    h, c = mh.shingle_hashes(texts)
    rh, rc = mh.shingle_hashes_reference(texts)
    assert np.array_equal(c, rc)
    assert h.dtype == rh.dtype and np.array_equal(h, rh)
    assert np.array_equal(mh.minhash_from_hashes(h, c), mh.minhash_from_hashes(rh, rc))


def test_signatures_unchanged_by_the_batched_path() -> None:
    # digests of what `shingle_hashes` and `signatures` returned before shingling was batched
    texts = varied_texts()
    assert sum(map(mh.is_cjk, texts)) > 50 and sum("\x00" in t for t in texts) > 20
    assert _digest(texts) == GOLDEN_WITH_NULS
    assert _digest([t.replace("\x00", "") for t in texts]) == GOLDEN_WITHOUT_NULS


GOLDEN_WITH_NULS = ("89b8d8834ba3210f", "d5feb8dcfd461dae")
GOLDEN_WITHOUT_NULS = ("c5eb701f3c88ab79", "ab150154080174a1")


@pytest.mark.parametrize("group_chars", [1, 64, 1000, 1 << 18])
def test_fast_path_equals_reference_at_every_grouping(group_chars: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # small groups put spaced and Chinese-like documents, huge-document handling and group cuts everywhere
    monkeypatch.setattr(sh, "GROUP_CHARS", group_chars)
    texts = varied_texts(250, seed=group_chars)
    _assert_same(texts)
    _assert_same([t.replace("\x00", "") for t in texts])
    _assert_same([t for t in texts if not mh.is_cjk(t)])
    _assert_same([t.replace("\x00", "") for t in texts if mh.is_cjk(t)])


def test_fast_path_equals_reference_on_real_and_huge_documents(real_texts: list[str]) -> None:
    _assert_same(real_texts[:400])
    _assert_same([t.upper() for t in real_texts[:50]])  # ASCII capitals: folded on bytes, not by str.lower
    big_en = " ".join(real_texts * 2)  # > GROUP_CHARS and > 1 MB: hashed in 1 MB pieces on its own
    big_zh = "".join(t for t in varied_texts(12000, seed=3) if mh.is_cjk(t)).replace("\x00", "")
    assert len(big_en) > max(sh.GROUP_CHARS, 1 << 20) and len(big_zh) > sh.GROUP_CHARS and mh.is_cjk(big_zh)
    _assert_same(["a b", big_en, "", big_zh, "中文", big_en.upper(), "short doc here"])
    _assert_same([])
    _assert_same([""])
    _assert_same(["", "   ", "\x00"])


def test_batched_script_detection_equals_is_cjk(real_texts: list[str]) -> None:
    # the batch classifier counts characters with tables built from the same regexes as `cjk_fraction`
    texts = varied_texts(600, seed=11) + real_texts[:200] + [
        "😀" * 10 + "中", "𠀀𠀁𠀂 ab", "ab\u3000中", "\u0e01\u0e02 x", "x" * 5000 + "中" * 3000, "中" * 3000 + " x" * 5000,
        "中" * 3 + "a" * 7, "中" * 3 + "a" * 8, "ΑΣ 中文", "",
    ]
    assert sh._cjk_flags(texts).tolist() == [mh.is_cjk(t) for t in texts]


_ALPHABET = st.sampled_from(list("aZ_9 .,\n\t\x00\u3000\u00a0") + ["中", "文", "ΑΣ", "σ", "İ", "é", "😀", "\udc80", "ǅ", "ß", "𠀀", "ก"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_ALPHABET, max_size=40).map("".join), max_size=12), st.sampled_from([1, 7, 50, 1 << 18]))
def test_fast_path_equals_reference_property(texts: list[str], group_chars: int) -> None:
    old = sh.GROUP_CHARS
    sh.GROUP_CHARS = group_chars
    try:
        _assert_same(texts)
        assert sh._cjk_flags(texts).tolist() == [mh.is_cjk(t) for t in texts]
    finally:
        sh.GROUP_CHARS = old
