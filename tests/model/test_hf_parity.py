"""Our logits against transformers.LlamaForCausalLM loaded from our own Llama-format export."""

import pytest
import torch

from ilm.model import build_model, get_preset
from ilm.model.hf import save_checkpoint
from ilm.model.rope import Rope

transformers = pytest.importorskip("transformers")


def _hf_llama(model, tmp_path):
    path = save_checkpoint(model, tmp_path / "llama", fmt="llama")
    return transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_logits_match_transformers_llama(tmp_path, kv_heads):
    model = build_model(get_preset("tiny", num_kv_heads=kv_heads), seed=1).eval()
    hf = _hf_llama(model, tmp_path)
    ids = torch.randint(0, model.config.vocab_size, (3, 40))
    with torch.no_grad():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize("kind", ["dynamic", "linear"])
def test_scaled_rope_matches_transformers_past_max_positions(tmp_path, kind):
    cfg = get_preset("tiny", max_position_embeddings=32, rope_scaling={"type": kind, "factor": 2.0})
    model = build_model(cfg, seed=2).eval()
    hf = _hf_llama(model, tmp_path)
    ids = torch.randint(0, cfg.vocab_size, (2, 60))  # well past max_position_embeddings
    with torch.no_grad():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-4


def test_dynamic_ntk_follows_the_hf_internlm2_formula():
    cfg = get_preset("tiny", rope_theta=1_000_000.0, max_position_embeddings=32,
                     rope_scaling={"type": "dynamic", "factor": 2.0})
    rope = Rope(cfg)
    dim = cfg.head_dim
    exps = torch.arange(0, dim, 2).float() / dim
    for seq_len in (10, 32, 33, 64, 100):
        if seq_len > 32:
            base = 1_000_000.0 * ((2.0 * seq_len / 32) - (2.0 - 1)) ** (dim / (dim - 2))
        else:
            base = 1_000_000.0
        expected = 1.0 / (base**exps)
        positions = torch.arange(seq_len)[None]
        got = rope.inv_freq(positions).reshape(-1)
        assert torch.allclose(got, expected, rtol=1e-6), seq_len
        assert rope.effective_base(seq_len) == pytest.approx(base)
    # below the threshold nothing changes; above, the base only grows
    assert rope.effective_base(32) == 1_000_000.0
    assert rope.effective_base(64) > rope.effective_base(33) > 1_000_000.0


def test_dynamic_ntk_model_logits_equal_reference_rope(tmp_path):
    """Past max positions the model's logits equal a model whose base is set to the formula's value."""
    cfg = get_preset("tiny", max_position_embeddings=32, rope_scaling={"type": "dynamic", "factor": 2.0})
    model = build_model(cfg, seed=3).eval()
    T = 70
    fixed = build_model(cfg.replace(rope_scaling=None, rope_theta=Rope(cfg).effective_base(T)), seed=0).eval()
    fixed.load_state_dict(model.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (1, T))
    with torch.no_grad():
        assert (model(ids) - fixed(ids)).abs().max().item() <= 1e-4
