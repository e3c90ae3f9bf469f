"""Per-part metadata written at tokenization: pretraining start-up reads no token array (issue 11, item 7)."""

import json
import shutil

import numpy as np
import pytest

from ilm.config import from_dict
from ilm.data.shards import ShardError, TokenShards, write_token_shards
from ilm.train import pretrain
from ilm.train.pretrain import PretrainConfig, unigram_entropy


def _scan(path) -> np.ndarray:
    tokens = np.concatenate([np.fromfile(p, dtype=np.uint32) for p in sorted(path.glob("part-*.tokens"))])
    return np.bincount(tokens)


def test_tokenization_writes_part_metadata(corpus):
    path = corpus["tokens"]["a"]
    shards = TokenShards(path)
    assert len(shards.parts) == 2
    for part in shards.parts:
        meta = json.loads(part.prefix.with_name(part.prefix.name + ".meta.json").read_text())
        tokens = np.fromfile(part.prefix.with_name(part.prefix.name + ".tokens"), dtype=np.uint32)
        assert meta["documents"] == len(part.offsets) - 1 and meta["tokens"] == len(tokens)
        assert meta["max_token_id"] == int(tokens.max())
        counts = np.load(part.prefix.with_name(meta["counts"]))
        assert np.array_equal(counts, np.bincount(tokens))
    assert np.array_equal(shards.token_counts(), _scan(path))
    assert json.loads((path / "meta.json").read_text())["max_token_id"] == shards.max_token_id()
    probs = _scan(path)[_scan(path) > 0] / _scan(path).sum()
    assert unigram_entropy(shards) == pytest.approx(float(-(probs * np.log(probs)).sum()), rel=1e-12)


class _StartupDone(Exception):
    pass


def test_pretrain_startup_reads_no_token_array(corpus, tmp_path, helpers, monkeypatch):
    """Every token of every source (and of the eval source) overwritten with an id far beyond the vocabulary:
    start-up validation must still pass, because it reads the metadata, not the tokens. The first packed row
    is where reading begins; the test stops there."""
    for name in ("a", "b", "held"):
        dst = tmp_path / "tokens" / name
        shutil.copytree(corpus["tokens"][name], dst)
        for tokens in dst.glob("part-*.tokens"):
            n = tokens.stat().st_size // 4
            tokens.write_bytes(np.full(n, 0xFFFFFFF0, dtype=np.uint32).tobytes())
    recipe = helpers.tiny_recipe(corpus, tmp_path / "run", eval_source=str(tmp_path / "tokens" / "held"))
    for s in recipe["sources"]:
        s["path"] = str(tmp_path / "tokens" / s["name"])

    def stop(*args, **kwargs):
        raise _StartupDone

    monkeypatch.setattr(pretrain, "Packer", stop)
    with pytest.raises(_StartupDone):
        pretrain.train(from_dict(PretrainConfig, recipe))


def test_out_of_vocabulary_ids_are_caught_from_metadata(corpus, tmp_path, helpers):
    write_token_shards(tmp_path / "bad", [[1, 5, 2], [1, 600, 2]])
    recipe = helpers.tiny_recipe(corpus, tmp_path / "run")
    recipe["sources"][1]["path"] = str(tmp_path / "bad")
    with pytest.raises(ValueError, match=r"source 'b' .* has token id 600 >= vocab 512"):
        pretrain.train(from_dict(PretrainConfig, recipe))


def test_parts_without_metadata_are_scanned_once_with_a_warning(corpus, tmp_path, capsys):
    path = tmp_path / "old"
    shutil.copytree(corpus["tokens"]["b"], path)
    for p in [*path.glob("part-*.meta.json"), *path.glob("part-*.counts.npy")]:
        p.unlink()  # as written before part metadata existed
    expected = _scan(path)
    assert TokenShards(path).max_token_id() == len(expected) - 1
    assert "no part metadata" in capsys.readouterr().err
    again = TokenShards(path)  # the scan wrote the metadata: no second scan, no warning
    assert again.max_token_id() == len(expected) - 1 and np.array_equal(again.token_counts(), expected)
    assert capsys.readouterr().err == ""


def test_stale_part_metadata_is_named(corpus, tmp_path):
    path = tmp_path / "stale"
    shutil.copytree(corpus["tokens"]["b"], path)
    meta_path = path / "part-00000.meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "tokens": meta["tokens"] + 1}))
    with pytest.raises(ShardError, match=r"part-00000\.meta\.json: says .* delete it to rebuild it"):
        TokenShards(path)
