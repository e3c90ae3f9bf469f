"""The id layout: released numbers, the seed reconciliation, scaled-down sizes and bad sizes."""

from __future__ import annotations

import pytest

from ilm.tokenizer.layout import (
    N_SPARE,
    NAMED_SPARE,
    SEED_BASE_TOKENS,
    SEED_CHINESE_TOKENS,
    Layout,
    spare_name,
)

RELEASED_IDS = {
    "<unk>": 0, "<s>": 1, "</s>": 2,
    "<|plugin|>": 92538, "<|interpreter|>": 92539, "<|action_end|>": 92540,
    "<|action_start|>": 92541, "<|im_end|>": 92542, "<|im_start|>": 92543,
}


def test_released_layout_numbers():
    lay = Layout.for_size()
    assert (lay.vocab_size, lay.n_base, lay.n_chinese, lay.n_spare) == (92544, 60004, 32390, 147)
    assert (lay.first_base, lay.first_chinese, lay.first_spare) == (3, 60007, 92397)
    # the seed's three counts overshoot the release by four; the release wins
    assert SEED_BASE_TOKENS + SEED_CHINESE_TOKENS + N_SPARE == 92548


def test_released_control_ids():
    ctrl = Layout.for_size().control_tokens()
    for name, i in RELEASED_IDS.items():
        assert ctrl[name] == i
    assert len(ctrl) == 3 + 147
    assert ctrl[spare_name(0)] == 92397 and ctrl[spare_name(140)] == 92537
    assert spare_name(141) not in ctrl  # slot 141 is <|plugin|> in the release
    assert sorted(ctrl.values()) == [0, 1, 2, *range(92397, 92544)]


@pytest.mark.parametrize("size", [512, 1024, 8192, 32768])
def test_scaled_layout_keeps_shape(size):
    lay = Layout.for_size(size)
    assert lay.n_base >= 256 and lay.n_chinese >= 0 and lay.n_spare == N_SPARE
    assert 3 + lay.n_base + lay.n_chinese + lay.n_spare == size
    ctrl = lay.control_tokens()
    assert [ctrl[n] for n in NAMED_SPARE] == list(range(size - 6, size))
    assert ctrl["<s>"] == 1 and lay.first_spare == size - 147


def test_8192_split_follows_release_proportion():
    lay = Layout.for_size(8192)
    assert (lay.n_base, lay.n_chinese) == (5223, 2819)


@pytest.mark.parametrize("size", [0, 128, 256, 384])
def test_too_small_for_special_block(size):
    with pytest.raises(ValueError, match="cannot hold the special block"):
        Layout.for_size(size)


def test_not_multiple_of_128():
    with pytest.raises(ValueError, match="multiple of 128; use 1024"):
        Layout.for_size(1000)


def test_base_tokens_out_of_range():
    with pytest.raises(ValueError, match="base tokens"):
        Layout.for_size(1024, n_base=100)
