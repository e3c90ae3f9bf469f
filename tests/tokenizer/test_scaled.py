"""The layout scaled down (1,024 tokens, Chinese learned from raw text): same shape, same guarantees."""

from __future__ import annotations

import json

import pytest
import regex
import tiktoken
from tokenizers import models

from ilm.tokenizer import build_tokenizer, load_tokenizer
from ilm.tokenizer.base import cl100k_reference
from ilm.tokenizer.layout import NAMED_SPARE


def test_scaled_layout(small_tok):
    lay = small_tok.manifest["layout"]
    assert small_tok.vocab_size == 1024 == lay["vocab_size"]
    assert (lay["n_base"], lay["n_chinese"], lay["n_spare"]) == (568, 306, 147)
    assert [small_tok.control_ids[n] for n in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    assert [small_tok.control_ids[n] for n in NAMED_SPARE] == list(range(1018, 1024))
    assert small_tok.id_to_token(1024 - 147) == "[UNUSED_TOKEN_0]"
    vocab = small_tok.hf.get_vocab(with_added_tokens=True)
    assert sorted(vocab.values()) == list(range(1024))


def test_scaled_chinese_tokens_and_reachability(small_tok, zh_text):
    state = json.loads(small_tok.hf.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in state["model"]["merges"]]
    bpe = models.BPE(vocab=state["model"]["vocab"], merges=merges, ignore_merges=False)
    for s, i in state["model"]["vocab"].items():
        if s not in small_tok.control_ids:
            assert [t.id for t in bpe.tokenize(s)] == [i], s
    han = regex.compile(r"\p{Han}")
    chinese = [small_tok.token_bytes(i) for i in range(3 + 568, 1024 - 147)]
    whole = [bool(han.search(b.decode("utf-8", "ignore"))) for b in chinese]
    assert all(w or min(b) >= 0x80 for w, b in zip(whole, chinese))  # Han, or pieces of characters
    assert sum(whole) > 100
    assert small_tok.decode(small_tok.encode(zh_text)) == zh_text
    # learned from this very text, the Chinese tokens must shorten it against the same base without them
    ref = cl100k_reference()
    base_only = tiktoken.Encoding("top568", pat_str=ref._pat_str, special_tokens={},
                                  mergeable_ranks={t: r for t, r in ref._mergeable_ranks.items() if r < 568})
    assert len(small_tok.encode(zh_text)) < 0.8 * len(base_only.encode_ordinary(zh_text))


def test_scaled_english_matches_cl100k_below_cut(small_tok, en_text):
    ref = cl100k_reference()
    split = regex.compile(ref._pat_str)
    expected = []
    for chunk in split.findall(en_text):
        r = ref.encode_ordinary(chunk)
        expected += [x + 3 for x in r] if max(r) < 568 else small_tok.encode(chunk)
    assert small_tok.encode(en_text) == expected


def test_saved_directory_loads_back(small_tok, en_text, zh_text, tmp_path):
    small_tok.save(tmp_path / "copy")
    again = load_tokenizer(tmp_path / "copy")
    assert again.encode(en_text + zh_text) == small_tok.encode(en_text + zh_text)
    assert again.control_ids == small_tok.control_ids
    assert again.manifest["layout"] == small_tok.manifest["layout"]


def test_any_tiktoken_file_as_base(tmp_path, zh_text):
    """--base accepts any `.tiktoken` rank file (here: plain text, the top 2,000 cl100k ranks)."""
    import base64

    ref = cl100k_reference()
    ranks = sorted(((r, t) for t, r in ref._mergeable_ranks.items() if r < 2000))
    path = tmp_path / "mini.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in ranks))
    zh = tmp_path / "zh.txt"
    zh.write_text(zh_text)
    tok = build_tokenizer(tmp_path / "out", vocab_size=1024, base=path, chinese=[zh])
    assert tok.manifest["base"]["ranks"] == 2000
    assert all(tok.token_bytes(r + 3) == t for r, t in ranks[:568])
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not base64 at all\n")
    with pytest.raises(ValueError, match="not a `base64 rank` line"):
        build_tokenizer(tmp_path / "out2", vocab_size=1024, base=bad, chinese=[zh])
