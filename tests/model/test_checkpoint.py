import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ilm.model import build_model, get_preset
from ilm.model.hf import CheckpointError, load_checkpoint, read_state_dict, save_checkpoint


def _same_tensors(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("fmt", ["internlm2", "llama"])
def test_round_trip_is_identical(tmp_path, fmt):
    model = build_model(get_preset("tiny", rope_scaling={"type": "dynamic", "factor": 2.0}), seed=4)
    path = save_checkpoint(model, tmp_path / fmt, fmt=fmt)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == fmt
    if fmt == "internlm2":
        assert config["architectures"] == ["InternLM2ForCausalLM"]
        assert config["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
    back = load_checkpoint(path)
    assert back.config == model.config
    _same_tensors(model, back)


def test_llama_layout_unpacks_wqkv(tmp_path):
    cfg = get_preset("tiny")  # 4 heads, 2 KV heads, head_dim 16: groups [q0 q1 k0 v0][q2 q3 k1 v1]
    model = build_model(cfg, seed=5)
    state = load_file(save_checkpoint(model, tmp_path / "l", fmt="llama") / "model.safetensors")
    wqkv = model.state_dict()["model.layers.0.attention.wqkv.weight"]
    d = cfg.head_dim
    rows = lambda slot: wqkv[slot * d:(slot + 1) * d]
    assert torch.equal(state["model.layers.0.self_attn.q_proj.weight"], torch.cat([rows(0), rows(1), rows(4), rows(5)]))
    assert torch.equal(state["model.layers.0.self_attn.k_proj.weight"], torch.cat([rows(2), rows(6)]))
    assert torch.equal(state["model.layers.0.self_attn.v_proj.weight"], torch.cat([rows(3), rows(7)]))
    assert torch.equal(state["lm_head.weight"], model.output.weight)


@pytest.mark.parametrize("fmt", ["internlm2", "llama"])
def test_sharded_checkpoint_loads(tmp_path, fmt):
    model = build_model(get_preset("tiny"), seed=6)
    path = save_checkpoint(model, tmp_path / "sharded", fmt=fmt, max_shard_bytes=100_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (path / "model.safetensors").exists()
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in model.parameters())
    assert all((path / s).exists() for s in shards)
    _same_tensors(model, load_checkpoint(path))


def test_sharded_bf16_round_trip(tmp_path):
    model = build_model(get_preset("tiny"), seed=7, dtype=torch.bfloat16)
    back = load_checkpoint(save_checkpoint(model, tmp_path / "bf16", max_shard_bytes=50_000))
    assert back.output.weight.dtype == torch.bfloat16
    _same_tensors(model, back)


def _corrupt(path, edit):
    state = read_state_dict(path)
    edit(state)
    save_file(state, path / "model.safetensors")


def test_missing_tensor_is_named(tmp_path):
    path = save_checkpoint(build_model(get_preset("tiny")), tmp_path / "c")
    _corrupt(path, lambda s: s.pop("model.layers.1.ffn_norm.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.ffn_norm\.weight"):
        load_checkpoint(path)


def test_unexpected_tensor_is_named(tmp_path):
    path = save_checkpoint(build_model(get_preset("tiny")), tmp_path / "c")
    _corrupt(path, lambda s: s.__setitem__("model.layers.0.attention.bias", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: model\.layers\.0\.attention\.bias"):
        load_checkpoint(path)


def test_misshaped_tensor_names_both_shapes(tmp_path):
    path = save_checkpoint(build_model(get_preset("tiny")), tmp_path / "c", fmt="llama")
    _corrupt(path, lambda s: s.__setitem__("model.layers.0.self_attn.k_proj.weight", torch.zeros(16, 64)))
    with pytest.raises(CheckpointError, match=r"k_proj\.weight: checkpoint has shape \(16, 64\), model expects \(32, 64\)"):
        load_checkpoint(path)


def test_unknown_rope_scaling_in_config_json(tmp_path):
    path = save_checkpoint(build_model(get_preset("tiny")), tmp_path / "c")
    cfg = json.loads((path / "config.json").read_text())
    cfg["rope_scaling"] = {"type": "longrope", "factor": 4.0}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown rope_scaling type 'longrope'"):
        load_checkpoint(path)


def test_heads_not_divisible_in_config_json(tmp_path):
    path = save_checkpoint(build_model(get_preset("tiny")), tmp_path / "c")
    cfg = json.loads((path / "config.json").read_text())
    cfg["num_key_value_heads"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="num_heads=4 is not divisible by num_kv_heads=3"):
        load_checkpoint(path)


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    first = build_model(get_preset("tiny"), seed=8)
    path = save_checkpoint(first, tmp_path / "ckpt", max_shard_bytes=100_000)
    import safetensors.torch

    calls = {"n": 0}
    real = safetensors.torch.save_file

    def dying_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", dying_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(build_model(get_preset("tiny"), seed=9), path, max_shard_bytes=100_000)
    monkeypatch.undo()
    _same_tensors(first, load_checkpoint(path))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left behind
