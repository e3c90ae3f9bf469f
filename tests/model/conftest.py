import pytest
import torch

from ilm.model import build_model, get_preset


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture
def tiny():
    return build_model(get_preset("tiny"), seed=0).eval()


def tiny_config(**overrides):
    return get_preset("tiny", **overrides)
