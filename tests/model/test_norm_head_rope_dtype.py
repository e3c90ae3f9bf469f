"""norm_head (docs/recipe.md, Model) and the dtype of what reaches the attention kernel under autocast."""

import pytest
import torch
import torch.nn.functional as F

from ilm.model import build_model, get_preset, internlm2
from ilm.model.attention import packed_batch
from ilm.model.hf import load_checkpoint, save_checkpoint
from ilm.train.losses import lm_loss


def test_release_presets_set_norm_head_where_the_release_does():
    assert get_preset("internlm2-1.8b").norm_head is True  # the 1.8B release's training config
    assert not get_preset("internlm2-7b").norm_head and not get_preset("internlm2-20b").norm_head
    assert not get_preset("tiny").norm_head
    # no extra parameters: the count of docs/recipe.md, Model stands
    assert get_preset("internlm2-1.8b").num_params() == 1_889_110_016


def _norm_head_model():
    model = build_model(get_preset("tiny", norm_head=True), seed=0).eval()
    with torch.no_grad():  # rows of very different norms, so normalising visibly matters
        model.output.weight.mul_(torch.linspace(0.1, 10.0, model.output.weight.shape[0])[:, None])
    return model


def test_norm_head_logits_use_l2_normalised_rows():
    model = _norm_head_model()
    ids = torch.randint(3, 512, (2, 12))
    with torch.no_grad():
        hidden = model(ids, return_hidden=True)
        expected = hidden @ F.normalize(model.output.weight, dim=1).t()
        logits = model(ids)
        plain = hidden @ model.output.weight.t()
    assert torch.allclose(logits, expected, atol=1e-5)
    assert not torch.allclose(logits, plain, atol=1e-2)
    # the loss path (lm_loss takes the weight directly) uses the same normalised rows, with gradients through it
    labels = torch.randint(3, 512, (2, 12))
    loss = model(ids, labels=labels)
    assert torch.allclose(loss, lm_loss(hidden, F.normalize(model.output.weight, dim=1), labels), atol=1e-5)
    model.train()
    model(ids, labels=labels).backward()
    grad = model.output.weight.grad
    # the gradient of a loss through normalize(W) has no component along each row (scale invariance)
    assert torch.allclose((grad * model.output.weight).sum(dim=1), torch.zeros(512), atol=1e-6)


def test_norm_head_export_is_a_plain_head_with_the_same_logits(tmp_path):
    model = _norm_head_model()
    ids = torch.randint(3, 512, (2, 12))
    with torch.no_grad():
        before = model(ids)
    raw = model.output.weight.detach().clone()
    path = save_checkpoint(model, tmp_path / "hf")
    assert "norm_head" not in (path / "config.json").read_text()  # keys as the released configs spell them
    back = load_checkpoint(path).eval()
    assert back.config.norm_head is False
    assert torch.allclose(back.output.weight.norm(dim=1), torch.ones(512), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(back(ids), before, atol=1e-5)
    assert torch.equal(model.output.weight, raw)  # the trained model keeps its raw rows


@pytest.mark.parametrize("backend", ["sdpa", "blocks"])
def test_attention_gets_one_dtype_under_bf16_autocast(monkeypatch, backend):
    """flash-attention takes q, k, v of one dtype: RoPE must leave q/k in the autocast dtype, as v is."""
    seen = []
    real = internlm2.attend

    def spy(q, k, v, batch):
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, batch)

    monkeypatch.setattr(internlm2, "attend", spy)
    model = build_model(get_preset("tiny"), seed=0)
    ids = torch.randint(3, 512, (2, 16))
    doc_ids = torch.tensor([[0] * 6 + [1] * 10, [0] * 16])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids, batch=packed_batch(doc_ids, backend))
    assert seen and all(d == (torch.bfloat16,) * 3 for d in seen), seen


def test_fp32_rope_is_unchanged():
    """Outside autocast nothing is cast: fp32 q/k rotate in fp32, exactly as before."""
    from ilm.model.rope import Rope, apply_rope, rotate_half

    rope = Rope(get_preset("tiny"))
    pos = torch.arange(10)[None]
    cos, sin = rope.cos_sin(pos, torch.float32)
    x = torch.randn(1, 4, 10, 16)
    assert torch.equal(apply_rope(x, cos, sin), x * cos + rotate_half(x) * sin)
    assert apply_rope(x.bfloat16(), cos, sin).dtype == torch.bfloat16


def test_norm_head_streamed_training_export_bakes_the_same_rows(tmp_path):
    """The trainers export through the streamed writer (ilm.train.export), not save_checkpoint: same rule."""
    from ilm.train.export import export_hf

    model = _norm_head_model()
    ids = torch.randint(3, 512, (2, 12))
    with torch.no_grad():
        before = model(ids)
    path = export_hf(model.state_dict(), model.config, tmp_path / "streamed")
    back = load_checkpoint(path).eval()
    with torch.no_grad():
        assert torch.allclose(back(ids), before, atol=1e-5)
