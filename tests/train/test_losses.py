import pytest
import torch
import torch.nn.functional as F

from ilm.train.losses import IGNORE_INDEX, lm_loss, shift_labels


@pytest.mark.parametrize("chunk_rows", [1, 7, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_lm_loss_equals_cross_entropy_with_grads(chunk_rows, dtype):
    torch.manual_seed(0)
    h = torch.randn(2, 9, 16, dtype=dtype, requires_grad=True)
    w = torch.randn(40, 16, dtype=dtype, requires_grad=True)
    y = torch.randint(0, 40, (2, 9))
    y[0, 3] = y[1, -1] = IGNORE_INDEX
    loss = lm_loss(h, w, y, chunk_rows=chunk_rows)
    (loss * 3).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy((h @ w.t()).float().view(-1, 40), y.view(-1), ignore_index=IGNORE_INDEX)
    (ref * 3).backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert loss.item() == pytest.approx(ref.item(), rel=tol)
    assert torch.allclose(gh.float(), h.grad.float(), atol=tol, rtol=tol)
    assert torch.allclose(gw.float(), w.grad.float(), atol=tol, rtol=tol)
    assert gh.dtype == dtype and gw.dtype == dtype


def test_lm_loss_without_grad_matches():
    h, w = torch.randn(5, 8), torch.randn(11, 8)
    y = torch.tensor([1, 2, IGNORE_INDEX, 4, 5])
    assert lm_loss(h, w, y).item() == pytest.approx(F.cross_entropy(h @ w.t(), y, ignore_index=-100).item())


def test_shift_labels():
    ids = torch.tensor([[5, 6, 7, 8]])
    assert shift_labels(ids).tolist() == [[6, 7, 8, IGNORE_INDEX]]
    mask = torch.tensor([[False, False, True, False]])
    assert shift_labels(ids, mask).tolist() == [[6, IGNORE_INDEX, 8, IGNORE_INDEX]]


def test_fused_lm_loss_under_bf16_autocast_with_fp32_weights():
    torch.manual_seed(0)
    h = torch.randn(12, 16, requires_grad=True)
    w = torch.randn(40, 16, requires_grad=True)
    y = torch.randint(0, 40, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = lm_loss(h, w, y, chunk_rows=5)
    loss.backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy((h @ w.t()).float(), y)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=3e-2)
    assert torch.allclose(gh, h.grad, atol=3e-2, rtol=5e-2) and torch.allclose(gw, w.grad, atol=3e-2, rtol=5e-2)
