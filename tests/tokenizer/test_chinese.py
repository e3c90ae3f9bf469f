"""Chinese stage: the incremental BPE trainer against a naive one, source reading, bad input."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ilm.tokenizer import build_tokenizer
from ilm.tokenizer.chinese import CorpusStats, admissible, continue_bpe, detect_format, read_source


def _naive(words, weights, token_bytes, first, n):
    """Recount every pair each step; ban inadmissible pairs in (count desc, pair asc) order."""
    words = [list(w) for w in words]
    tb = dict(token_bytes)
    vocab = {b: i for i, b in tb.items()}
    banned, merges, nxt = set(), [], first
    while len(merges) < n:
        counts = Counter()
        for w, f in zip(words, weights):
            for p in itertools.pairwise(w):
                counts[p] += f
        pick = None
        for _, p in sorted((-c, p) for p, c in counts.items() if c > 0 and p not in banned):
            merged = tb[p[0]] + tb[p[1]]
            if merged in vocab or not admissible(merged):
                banned.add(p)
                continue
            pick = p
            break
        if pick is None:
            raise ValueError("exhausted")
        tb[nxt] = tb[pick[0]] + tb[pick[1]]
        vocab[tb[nxt]] = nxt
        merges.append((pick[0], pick[1], nxt))
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pick:
                    out.append(nxt)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
        nxt += 1
    return merges


_WORDS = st.lists(st.tuples(st.text(alphabet="中国人民的aab ", min_size=1, max_size=7), st.integers(1, 9)),
                  min_size=1, max_size=25)


@settings(max_examples=120, deadline=None)
@given(_WORDS, st.integers(1, 12))
def test_incremental_trainer_equals_naive(items, n):
    base = {b + 3: bytes([b]) for b in range(256)}
    words = [[b + 3 for b in text.encode()] for text, _ in items]
    weights = [f for _, f in items]
    try:
        expected = _naive(words, weights, base, 259, n)
    except ValueError:
        with pytest.raises(ValueError, match="supports only"):
            continue_bpe(words, weights, dict(base), 259, n)
        return
    tb = dict(base)
    assert continue_bpe(words, weights, tb, 259, n) == expected
    assert all(admissible(tb[i]) for _, _, i in expected)


def test_admissible_rule():
    assert admissible("中国".encode())
    assert admissible(" 中".encode())
    assert admissible("B超".encode())
    assert admissible("中".encode()[:2])  # a fragment of a character: non-ASCII bytes only
    assert not admissible(b"ab")
    assert not admissible(b" the")
    assert not admissible(b"a" + "中".encode()[:2])  # ASCII plus a fragment, no whole Han character


def test_read_source_counts_bad_lines(tmp_path):
    f = tmp_path / "zh.txt"
    f.write_bytes("中国人民\n\n   \n".encode() + b"\xff\xfe\xfd broken\n" + "我们 的\n".encode()
                  + b"\xe4\xb8\n" + b"hello world\n")
    counts, stats = read_source([f], str.split, "text")
    assert (stats.lines, stats.empty, stats.invalid_utf8, stats.used) == (7, 2, 2, 3)
    assert counts == Counter({"中国人民": 1, "我们": 1, "的": 1})  # non-Chinese chunks are not learned from


def test_read_wordfreq_and_malformed(tmp_path):
    f = tmp_path / "dict.txt"
    f.write_text("中国 100 ns\n人民 7\nbad line here\n零 0 n\n\n")
    assert detect_format(f) == "text"  # a malformed line among the first: not a clean word list
    counts, stats = read_source([f], lambda s: [s], "wordfreq")
    assert counts == Counter({"中国": 100, "人民": 7})
    assert (stats.malformed, stats.empty, stats.used) == (2, 1, 2)
    g = tmp_path / "clean.txt"
    g.write_text("中国 100 ns\n人民 7\n")
    assert detect_format(g) == "wordfreq"
    with pytest.raises(ValueError, match="unknown Chinese source format"):
        read_source([g], str.split, "csv", CorpusStats())


def test_build_survives_bad_corpus_and_counts(tmp_path, zh_text):
    f = tmp_path / "zh_bad.txt"
    f.write_bytes(b"\n\n" + b"\xc3\x28 invalid\n" + zh_text.encode() + b"\n\xff\n")
    tok = build_tokenizer(tmp_path / "out", vocab_size=512, chinese=[f])
    corpus = tok.manifest["chinese"]["corpus"]
    assert corpus["invalid_utf8"] == 2 and corpus["empty"] >= 2 and corpus["used"] > 5
    assert tok.vocab_size == 512 and tok.control_ids["<|im_start|>"] == 511
    assert tok.decode(tok.encode(zh_text)) == zh_text


def test_too_small_chinese_source_is_a_clear_error(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("中国\n")
    with pytest.raises(ValueError, match="supports only .* new tokens"):
        build_tokenizer(tmp_path / "out", vocab_size=1024, chinese=[f])


def test_build_reuses_matching_directory(tmp_path, zh_text):
    f = tmp_path / "zh.txt"
    f.write_text(zh_text)
    first = build_tokenizer(tmp_path / "out", vocab_size=512, chinese=[f])
    stamp = (tmp_path / "out" / "tokenizer.json").stat().st_mtime_ns
    again = build_tokenizer(tmp_path / "out", vocab_size=512, chinese=[f])
    assert (tmp_path / "out" / "tokenizer.json").stat().st_mtime_ns == stamp
    assert again.encode(zh_text) == first.encode(zh_text)
    f.write_text(zh_text + "\n新的句子。\n")  # a different source: rebuilt
    build_tokenizer(tmp_path / "out", vocab_size=512, chinese=[f])
    assert (tmp_path / "out" / "tokenizer.json").stat().st_mtime_ns != stamp


def test_chinese_words_limits_the_source(tmp_path, zh_text):
    f = tmp_path / "zh.txt"
    f.write_text(zh_text)
    full = build_tokenizer(tmp_path / "all", vocab_size=512, chinese=[f])
    few = build_tokenizer(tmp_path / "few", vocab_size=512, chinese=[f], chinese_words=40)
    assert few.manifest["chinese"]["words"] == 40 and full.manifest["chinese"]["words"] is None
    assert few.vocab_size == 512 and few.decode(few.encode(zh_text)) == zh_text
    learned = {few.token_bytes(i) for i in range(3 + 256, 512 - 147)}
    assert learned != {full.token_bytes(i) for i in range(3 + 256, 512 - 147)}
