"""Batched language ID gives py3langid's own answer for every document, bit for bit."""

from __future__ import annotations

import random

from ilm.data.corpus import ZH_TEXTS, demo_documents
from ilm.data.normalize import detect_language, detect_languages


def test_batched_language_id_equals_one_by_one() -> None:
    docs, _ = demo_documents(n_real=300)
    rng = random.Random(0)
    texts = [d.text for d in docs] + list(ZH_TEXTS) + [
        "", " ", "A", "ALL CAPS SHOUTING TEXT HERE", "Ünïcödé çàfé naïve", "数据 data 混合 mixed", "🙂" * 50,
        "\ud800 lone surrogate", "x" * 5000, "\n\n\n", "Ελληνικά κείμενα εδώ", "русский текст",
    ]
    texts += ["".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x4E00, 0x9FFF), rng.randrange(0x400, 0x4FF)]))
                      for _ in range(rng.randrange(0, 300))) for _ in range(200)]
    for max_chars in (2000, 50):
        want = [detect_language(t, max_chars) for t in texts]
        got = detect_languages(texts, max_chars)
        assert got == want  # language and probability (floats compared exactly)
    assert detect_languages([]) == []
