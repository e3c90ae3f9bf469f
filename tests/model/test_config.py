import pytest

from ilm.model import ConfigError, build_model, get_preset
from ilm.model.config import ModelConfig

# docs/recipe.md, Model
EXACT = {
    "internlm2-1.8b": 1_889_110_016,
    "internlm2-7b": 7_737_708_544,
    "internlm2-20b": 19_861_149_696,
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_preset_parameter_counts_are_exact(name):
    model = build_model(get_preset(name), device="meta")
    assert sum(p.numel() for p in model.parameters()) == EXACT[name]
    assert get_preset(name).num_params() == EXACT[name]


def test_recipe_defaults():
    cfg = ModelConfig()
    assert cfg.vocab_size == 92_544
    assert cfg.rms_norm_eps == 1e-5
    assert cfg.rope_theta == 1_000_000
    assert cfg.max_position_embeddings == 32_768
    assert cfg.stop_token_ids == (2, 92_542)


def test_parameter_names_are_hf_internlm2():
    names = set(build_model(get_preset("tiny"), device="meta").state_dict())
    for n in [
        "model.tok_embeddings.weight", "model.layers.0.attention.wqkv.weight", "model.layers.0.attention.wo.weight",
        "model.layers.0.feed_forward.w1.weight", "model.layers.0.feed_forward.w2.weight",
        "model.layers.0.feed_forward.w3.weight", "model.layers.0.attention_norm.weight",
        "model.layers.0.ffn_norm.weight", "model.norm.weight", "output.weight",
    ]:
        assert n in names
    assert not any("bias" in n for n in names)


def test_heads_not_divisible_by_kv_heads():
    with pytest.raises(ConfigError, match="num_heads=6 is not divisible by num_kv_heads=4"):
        get_preset("tiny", num_heads=6, num_kv_heads=4, hidden_size=96)


def test_unknown_rope_scaling_type():
    with pytest.raises(ConfigError, match="unknown rope_scaling type 'yarn'"):
        get_preset("tiny", rope_scaling={"type": "yarn", "factor": 2.0})


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown model preset 'internlm2-3b'"):
        get_preset("internlm2-3b")


def test_flops_per_token_7b():
    flops = get_preset("internlm2-7b").flops_per_token(4096)
    non_embedding_matmul = 7_737_708_544 - 92_544 * 4096 - 65 * 4096
    assert flops["dense"] == 6 * non_embedding_matmul
    assert flops["attention"] == 6 * 32 * 4096 * 4096
