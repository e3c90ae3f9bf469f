import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ilm.data.packing import Packer, packed_labels
from ilm.data.shards import ShardError, TokenShards, tokenize_to_shards
from ilm.train.losses import IGNORE_INDEX


def test_shards_hold_bos_text_eos(corpus):
    shards = TokenShards(corpus["tokens"]["b"])
    tok = corpus["tok"]
    first = corpus["docs"][450]
    assert shards.doc(0).tolist() == tok.encode(first, bos=True) + [tok.eos_id]
    assert shards.num_docs == 150


def test_tokenization_resumes_only_unfinished_parts(corpus, tmp_path):
    out = tmp_path / "tok"
    first = tokenize_to_shards([corpus["root"] / "raw" / "a"], corpus["tokenizer"], out, workers=1)
    assert first["tokenized_now"] == 2
    (out / "part-00001.index.npy").unlink()  # as if killed while writing part 1
    again = tokenize_to_shards([corpus["root"] / "raw" / "a"], corpus["tokenizer"], out, workers=1)
    assert again["tokenized_now"] == 1 and again["tokens"] == first["tokens"]


def test_corrupt_and_empty_shards_are_named(corpus, tmp_path):
    out = tmp_path / "tok"
    tokenize_to_shards([corpus["root"] / "raw" / "b"], corpus["tokenizer"], out, workers=1)
    tokens = out / "part-00000.tokens"
    tokens.write_bytes(tokens.read_bytes()[:-8])
    with pytest.raises(ShardError, match=r"part-00000\.tokens: corrupt shard"):
        TokenShards(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "meta.json").write_text("{}")
    with pytest.raises(ShardError, match="no finished parts"):
        TokenShards(empty)


def test_tiers_set_epochs(corpus, tmp_path, helpers):
    write_jsonl = helpers.write_jsonl
    write_jsonl(tmp_path / "raw/high.jsonl", ["def f():\n    return 1"] * 2, tier="high")
    write_jsonl(tmp_path / "raw/low.jsonl", ["x = 1"] * 3, tier="low")
    tokenize_to_shards([tmp_path / "raw"], corpus["tokenizer"], tmp_path / "t", workers=1)
    shards = TokenShards(tmp_path / "t")
    assert sorted(shards.epochs.tolist()) == [0.0, 0.0, 0.0, 3.0, 3.0]
    packer = Packer({"code": shards}, {"code": 1.0}, window=16, seed=0)
    seen = {tuple(packer.cursors["code"].order.tolist())}
    assert all(shards.epochs[i] > 0 for order in seen for i in order)  # low tier never trained on
    assert len(packer.cursors["code"].order) == 6  # each high-tier file three times


def _packer(corpus, window=48, seed=3):
    sources = {n: TokenShards(corpus["tokens"][n]) for n in ("a", "b")}
    return Packer(sources, {"a": 0.7, "b": 0.3}, window, seed=seed)


def test_rows_are_full_and_deterministic(corpus):
    ids1, docs1 = _packer(corpus).next_batch(20)
    ids2, docs2 = _packer(corpus).next_batch(20)
    assert ids1.shape == (20, 48) and torch.equal(ids1, ids2) and torch.equal(docs1, docs2)
    assert (ids1 >= 0).all()  # no padding anywhere


def test_resume_gives_the_same_rows(corpus):
    p = _packer(corpus)
    p.next_batch(7)
    state = p.state_dict()
    expected = p.next_batch(30)
    q = _packer(corpus)
    q.load_state_dict(state)
    got = q.next_batch(30)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_long_documents_are_split_across_rows(corpus):
    p = _packer(corpus, window=16)
    ids, docs = p.next_batch(40)
    flat = ids.flatten().tolist()
    shards = {n: TokenShards(corpus["tokens"][n]) for n in ("a", "b")}
    longest = max(int(s.doc_lengths.max()) for s in shards.values())
    assert longest > 16
    # every row still starts a document at position 0, so split tails restart their positions
    assert (docs[:, 0] == 0).all()
    assert len(flat) == 640


def test_mixture_follows_weights(corpus):
    """Weights are token shares (tests/train/test_mixture_token_shares.py: sources of very different lengths)."""
    sources = {n: TokenShards(corpus["tokens"][n]) for n in ("a", "b")}
    p = Packer(sources, {"a": 0.8, "b": 0.2}, 64, seed=0)
    for _ in range(1000):
        p.next_row()
    assert abs(p.taken[0] / sum(p.taken) - 0.8) < 0.02  # exact to within one document


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6))
def test_labels_never_cross_documents(lens):
    doc_ids = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))[None]
    ids = torch.arange(doc_ids.shape[1])[None] + 100
    labels = packed_labels(ids, doc_ids)
    for t in range(doc_ids.shape[1]):
        if t + 1 < doc_ids.shape[1] and doc_ids[0, t + 1] == doc_ids[0, t]:
            assert labels[0, t] == ids[0, t + 1]
        else:
            assert labels[0, t] == IGNORE_INDEX


def test_unknown_mixture_source(corpus):
    with pytest.raises(ValueError, match=r"unknown sources \['web'\]"):
        Packer({"a": TokenShards(corpus["tokens"]["a"])}, {"web": 1.0}, 16)
