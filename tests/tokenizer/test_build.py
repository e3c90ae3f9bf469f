"""Acceptance for the default build: size, special ids, reachability, cl100k parity, round trips."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, models, pre_tokenizers

from ilm.tokenizer.base import (
    CL100K_PATTERN,
    cl100k_reference,
    from_bytelevel,
    load_ranks,
    recover_merges,
    top_k,
)
from ilm.tokenizer.hf import split_for_parallel
from ilm.tokenizer.layout import NAMED_SPARE

_SPLIT = pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior="isolated")
_REF_SPLIT = regex.compile(cl100k_reference()._pat_str)
_ASSIGNED = st.characters(exclude_categories=("Cs", "Cn", "Co"))
K = 60004  # the cut: cl100k ranks below it are our ids 3 .. 60006

RELEASED_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|plugin|>": 92538, "<|interpreter|>": 92539,
                "<|action_end|>": 92540, "<|action_start|>": 92541, "<|im_end|>": 92542, "<|im_start|>": 92543}


@pytest.fixture(scope="module")
def ref():
    return cl100k_reference()


@pytest.fixture(scope="module")
def ref_split():
    """tiktoken's own cl100k pattern (with possessive quantifiers), for chunk-wise comparisons."""
    return regex.compile(cl100k_reference()._pat_str)


def test_default_build_has_92544_tokens(full_tok):
    assert full_tok.vocab_size == 92544
    vocab = full_tok.hf.get_vocab(with_added_tokens=True)
    assert sorted(vocab.values()) == list(range(92544))  # every id used exactly once
    lay = full_tok.manifest["layout"]
    assert (lay["n_base"], lay["n_chinese"], lay["n_spare"]) == (60004, 32390, 147)


def test_special_tokens_at_released_ids(full_tok):
    for name, i in RELEASED_IDS.items():
        assert full_tok.hf.token_to_id(name) == i
        assert full_tok.control_ids[name] == i
        assert full_tok.id_to_token(i) == name
    assert [full_tok.id_to_token(i) for i in (92397, 92400, 92537)] == [
        "[UNUSED_TOKEN_0]", "[UNUSED_TOKEN_3]", "[UNUSED_TOKEN_140]"]
    assert (full_tok.bos_id, full_tok.eos_id, full_tok.pad_id, full_tok.unk_id) == (1, 2, 2, 0)
    assert full_tok.stop_ids == (2, 92542)
    assert full_tok.encode("hi", bos=True)[0] == 1


def test_base_ids_are_cl100k_ranks_plus_3(full_tok, ref):
    for rank in (0, 1, 255, 256, 1000, 30000, K - 1):
        assert full_tok.token_bytes(rank + 3) == ref.decode_single_token_bytes(rank)
    # the first Chinese token follows the base block and holds a Han character
    assert "\u4e00" <= full_tok.token_bytes(60007).decode("utf-8", "ignore")[-1:] <= "\u9fff" or any(
        "\u4e00" <= ch <= "\u9fff" for ch in full_tok.token_bytes(60007).decode("utf-8", "ignore"))


def test_every_ordinary_token_reachable_by_merges(full_tok):
    """Merge-closure: BPE on each token's own bytes (no shortcut, no pre-tokenizer) gives that token."""
    state = json.loads(full_tok.hf.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in state["model"]["merges"]]
    bpe = models.BPE(vocab=state["model"]["vocab"], merges=merges, ignore_merges=False)
    control = set(full_tok.control_ids)
    bad = [(s, i) for s, i in state["model"]["vocab"].items()
           if s not in control and [t.id for t in bpe.tokenize(s)] != [i]]
    assert bad == []
    assert len(state["model"]["vocab"]) - len(control) == 92544 - 150


def test_every_ordinary_token_round_trips_as_text(full_tok):
    """decode(id) then encode gives id back, for every token whose bytes are valid UTF-8."""
    texts, ids, fragments = [], [], 0
    for i in range(3, 92397):
        try:
            texts.append(full_tok.token_bytes(i).decode("utf-8"))
            ids.append(i)
        except UnicodeDecodeError:
            fragments += 1  # partial UTF-8 (a byte piece of a character): covered by the merge test
    got = full_tok.encode_batch(texts)
    assert [i for i, g in zip(ids, got) if g != [i]] == []
    assert len(ids) > 90000 and fragments < 2000


def _expected_ours(full_tok, ref, ref_split, text):
    """cl100k's ids (+3) chunk by chunk, except chunks where cl100k uses a token above the cut."""
    out = []
    for chunk in ref_split.findall(text):
        r = ref.encode_ordinary(chunk)
        out += [x + 3 for x in r] if max(r) < K else full_tok.encode(chunk)
    return out


def test_english_and_code_match_cl100k_below_cut(full_tok, ref, ref_split, en_text, code_text):
    for text in (en_text, code_text):
        ours = full_tok.encode(text)
        assert ours == _expected_ours(full_tok, ref, ref_split, text)
        # most of it really is cl100k's own segmentation
        agree = sum(max(ref.encode_ordinary(c)) < K for c in ref_split.findall(text))
        assert agree / len(ref_split.findall(text)) > 0.97


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(min_codepoint=9, max_codepoint=126), max_size=300))
def test_ascii_text_matches_cl100k_below_cut(full_tok, ref, ref_split, text):
    assert full_tok.encode(text) == _expected_ours(full_tok, ref, ref_split, text)


def test_split_pattern_equals_tiktoken(full_tok, ref_split, en_text, zh_text, code_text):
    tricky = ["a  b\n\n  c \r\n d's I'LL 12345 x\u00a0y\t\t\n  ", "x \n", "x  ", " ", "a \n b", "1234567"]
    for text in (en_text, zh_text, code_text, *tricky):
        spans = [s for s, _ in full_tok.hf.pre_tokenizer.pre_tokenize_str(text)]
        assert [from_bytelevel(s).decode() for s in spans] == ref_split.findall(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab Z1\n\r\t'.中\u00a0\u3000"), max_size=40) | st.text(_ASSIGNED, max_size=60))
def test_split_pattern_equals_tiktoken_property(text):
    """Assigned characters only: regex engines disagree on code points their Unicode tables predate."""
    ours = [s for s, _ in _SPLIT.pre_tokenize_str(text)]
    assert ours == _REF_SPLIT.findall(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=400))
def test_decode_encode_round_trip_unicode(full_tok, text):
    assert full_tok.decode(full_tok.encode(text)) == text
    assert full_tok.decode(full_tok.encode(text, special=True)) == text


_CONTROL_TEXT = st.sampled_from(["<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>", "[UNUSED_TOKEN_7]",
                                 *NAMED_SPARE])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=20), _CONTROL_TEXT), max_size=8).map("".join))
def test_round_trip_with_control_text(full_tok, text):
    plain = full_tok.encode(text)
    assert full_tok.decode(plain) == text
    assert not set(plain) & set(full_tok.control_ids.values())  # never a control id unless asked
    assert full_tok.decode(full_tok.encode(text, special=True)) == text


def test_recover_merges_rejects_non_merge_closed_vocab():
    ranks = load_ranks()
    tokens = top_k(ranks, 300)
    broken = tokens[:256] + [b"xyz"]  # "xyz" has no parts among the lower ranks
    with pytest.raises(ValueError, match="not the merge"):
        recover_merges(broken)


_PIECES = st.lists(st.sampled_from(["a", "Bc", " ", "  ", "\n", "\n\n", "\r\n", "\t", ".", "'s", "12345", "中文",
                                    "<|im_end|>", "\u3000", "\x1c", "\x85", "\u2028", "!\n"]), max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_PIECES.map("".join) | st.text(max_size=200))
def test_parallel_cuts_give_the_same_ids(full_tok, text):
    """Long texts are cut at newline+non-space and encoded in parallel: ids equal one whole-text call."""
    with mock.patch("ilm.tokenizer.hf.PARALLEL_CHARS", 4), mock.patch("ilm.tokenizer.fast.PARALLEL_CHARS", 4):
        assert "".join(split_for_parallel(text, 8)) == text
        for special in (False, True):
            whole = (full_tok.hf if special else full_tok._plain).encode(text, add_special_tokens=True).ids
            assert full_tok.encode(text, bos=True, special=special) == [full_tok.bos_id, *whole]


def test_parallel_cuts_on_real_text(full_tok, code_text, en_text, zh_text):
    text = code_text + en_text + zh_text * 20
    assert len(split_for_parallel(text, 8)) > 4
    assert full_tok.encode(text) == full_tok._plain.encode(text, add_special_tokens=False).ids


def test_batch_equals_single(full_tok, en_text, zh_text):
    lines = (en_text + zh_text).splitlines()
    assert full_tok.encode_batch(lines, bos=True) == [full_tok.encode(x, bos=True) for x in lines]
