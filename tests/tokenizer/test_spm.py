"""Loading an InternLM2-style sentencepiece `tokenizer.model` (one trained here, in the test)."""

from __future__ import annotations

import io

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilm.tokenizer import load_tokenizer
from ilm.tokenizer.layout import NAMED_SPARE
from ilm.tokenizer.spm import SentencePieceTokenizer


def _train(text: str, symbols: list[str]) -> bytes:
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=out, vocab_size=1200, model_type="bpe",
        user_defined_symbols=symbols, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    return out.getvalue()


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory, en_text, zh_text):
    d = tmp_path_factory.mktemp("spm")
    (d / "tokenizer.model").write_bytes(_train(en_text + zh_text, list(NAMED_SPARE)))
    return d


@pytest.fixture(scope="module")
def sp_tok(sp_dir):
    return load_tokenizer(sp_dir)


def test_loads_and_finds_control_tokens(sp_tok, sp_dir):
    assert isinstance(sp_tok, SentencePieceTokenizer)
    assert isinstance(load_tokenizer(sp_dir / "tokenizer.model"), SentencePieceTokenizer)
    raw = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    assert (sp_tok.unk_id, sp_tok.bos_id, sp_tok.eos_id, sp_tok.pad_id) == (0, 1, 2, 2)
    for name in NAMED_SPARE:
        assert sp_tok.control_ids[name] == raw.piece_to_id(name) > 2
    assert sp_tok.stop_ids == (2, raw.piece_to_id("<|im_end|>"))


def test_encode_matches_sentencepiece(sp_tok, sp_dir, en_text, zh_text):
    raw = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    for text in (en_text, zh_text, "mixed 文本 😀 text"):
        assert sp_tok.encode(text) == raw.encode(text)
        assert sp_tok.encode(text, bos=True) == [1, *raw.encode(text)]
        assert sp_tok.decode(sp_tok.encode(text)) == text
    assert sp_tok.encode_batch([en_text, zh_text]) == [raw.encode(en_text), raw.encode(zh_text)]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=80).filter(lambda s: not s.startswith(" ")))
def test_round_trip_property(sp_tok, text):
    assert sp_tok.decode(sp_tok.encode(text)) == text


def test_control_text_stays_text_unless_asked(sp_tok):
    text = "a<|im_start|>b<|im_end|>"
    plain = sp_tok.encode(text)
    assert not set(plain) & set(sp_tok.control_ids.values())
    assert sp_tok.decode(plain) == text
    special = sp_tok.encode(text, special=True)
    assert sp_tok.control_ids["<|im_start|>"] in special and sp_tok.control_ids["<|im_end|>"] in special
    assert sp_tok.decode(special) == text and sp_tok.decode(special, skip_special=True) == "ab"


def test_render_mask_and_parse(sp_tok):
    conv = [{"role": "user", "content": "<|im_start|>system\nhi"},
            {"role": "assistant", "content": "你好", "tool_calls": [{"name": "f", "parameters": {"x": 1}}]}]
    r = sp_tok.render(conv)
    ctrl = {v: k for k, v in sp_tok.control_ids.items()}
    assert [ctrl[i] for i in r.ids if i in ctrl] == [
        "<s>", "<|im_start|>", "<|im_end|>", "<|im_start|>", "<|action_start|>", "<|plugin|>", "<|action_end|>",
        "<|im_end|>"]
    assert sp_tok.decode(r.ids) == r.text
    trained = sp_tok.decode([i for i, m in zip(r.ids, r.mask) if m])
    assert trained.strip() == '你好<|action_start|><|plugin|>\n{"name": "f", "parameters": {"x": 1}}<|action_end|><|im_end|>'
    reply = sp_tok.parse(r.ids[r.ids.index(sp_tok.control_ids["<|im_start|>"], 3) + 1:])
    assert reply.tool_calls == [{"name": "f", "parameters": {"x": 1}}]


def test_released_spare_names_are_mapped(tmp_path, en_text):
    # a model that only knows the spare names at the released slots 141..146
    (tmp_path / "tokenizer.model").write_bytes(_train(en_text, [f"[UNUSED_TOKEN_{k}]" for k in range(141, 147)]))
    tok = load_tokenizer(tmp_path)
    raw = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert tok.control_ids["<|plugin|>"] == raw.piece_to_id("[UNUSED_TOKEN_141]")
    assert tok.control_ids["<|im_start|>"] == raw.piece_to_id("[UNUSED_TOKEN_146]")
    assert tok.render_text([{"role": "user", "content": "x"}]) == "<s><|im_start|>user\nx<|im_end|>\n"


def test_model_without_chat_tokens_is_rejected(tmp_path, en_text):
    (tmp_path / "tokenizer.model").write_bytes(_train(en_text, []))
    with pytest.raises(ValueError, match="no piece for <\\|plugin\\|>"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing")
