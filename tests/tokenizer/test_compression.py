"""Compression (characters per token) against tiktoken's cl100k: Chinese >= 1.5x, English and code within 3%."""

from __future__ import annotations

import pytest

from ilm.tokenizer.base import cl100k_reference


@pytest.fixture(scope="module")
def ref():
    return cl100k_reference()


def _ratio(full_tok, ref, text: str) -> float:
    """ilm's characters per token divided by cl100k's (> 1: ilm compresses better)."""
    ours = len(text) / len(full_tok.encode(text))
    theirs = len(text) / len(ref.encode_ordinary(text))
    return ours / theirs


def test_chinese_at_least_1_5x_cl100k(full_tok, ref, zh_text):
    assert _ratio(full_tok, ref, zh_text) >= 1.5


def test_english_within_3_percent(full_tok, ref, en_text):
    assert _ratio(full_tok, ref, en_text) >= 0.97


def test_code_within_3_percent(full_tok, ref, code_text):
    assert _ratio(full_tok, ref, code_text) >= 0.97


def test_ratio_reflects_the_vocabulary(full_tok, ref, zh_text, en_text):
    """Guard against a vacuous pass: cl100k against itself is exactly 1, bytes score far lower."""
    assert len(ref.encode_ordinary(en_text)) < len(en_text.encode()) / 3
    assert len(full_tok.encode(zh_text)) < len(zh_text)  # more than one character per token on Chinese
