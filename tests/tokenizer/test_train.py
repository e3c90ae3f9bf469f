"""`ilm tokenizer train`: a byte-level BPE on the user's corpus with the same control layout."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilm.tokenizer import load_tokenizer, train_tokenizer
from ilm.tokenizer.layout import NAMED_SPARE


@pytest.fixture(scope="module")
def trained(tmp_path_factory, en_text, zh_text, code_text):
    d = tmp_path_factory.mktemp("train")
    corpus = d / "corpus.txt"
    corpus.write_bytes((en_text + zh_text + code_text).encode() + b"\n\n\xff\xfe broken line\n\n")
    return train_tokenizer([corpus], d / "tok", vocab_size=1024), d


def test_layout_and_corpus_counts(trained):
    tok, d = trained
    assert tok.vocab_size == 1024
    assert [tok.control_ids[n] for n in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    assert [tok.control_ids[n] for n in NAMED_SPARE] == list(range(1018, 1024))
    assert tok.id_to_token(877) == "[UNUSED_TOKEN_0]"
    corpus = tok.manifest["corpus"]
    assert corpus["invalid_utf8"] == 1 and corpus["empty"] >= 3
    assert sorted(tok.hf.get_vocab(with_added_tokens=True).values()) == list(range(1024))
    assert load_tokenizer(d / "tok").encode("hello world") == tok.encode("hello world")


def test_trained_tokens_compress_the_corpus(trained, en_text):
    tok, _ = trained
    assert len(tok.encode(en_text)) < len(en_text.encode()) / 1.8  # 618 merges: well beyond bytes


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_trained_round_trip(trained, text):
    tok, _ = trained
    assert tok.decode(tok.encode(text)) == text


def test_corpus_too_small_is_a_clear_error(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("just a few words\n")
    with pytest.raises(ValueError, match="supports only .* ordinary tokens"):
        train_tokenizer([f], None, vocab_size=1024)
    with pytest.raises(ValueError, match="cannot hold the special block"):
        train_tokenizer([f], None, vocab_size=256)
