import math

import pytest

from shadowattn_tvm.block import AttentionBlock, CausalMode, KVMap, keep_count, max_keep_count


@pytest.mark.parametrize("ratio,valid,k_min,expected", [
    (0.2, 10, 1, 2),  # 0.2 * 10 is exactly 2 in float64: no spurious round-up
    (0.2, 15, 1, 3),  # 3.0000000000000004 -> 3
    (0.2, 11, 1, 3),
    (0.2, 5, 16, 5),  # k_min capped by L
    (0.2, 100, 16, 20),
    (0.05, 100, 16, 16),
    (1.0, 7, 1, 7),
    (0.5, 0, 4, 0),
])
def test_keep_count(ratio, valid, k_min, expected):
    assert keep_count(ratio, valid, k_min) == expected


@pytest.mark.parametrize("visible,expected", [(2048, 410), (1000, 410), (300, 300), (16, 16), (0, 0)])
def test_keep_count_budget_is_a_share_of_the_kv_length(visible, expected):
    # every causal row gets ceil(0.2 * 2048) = 410 keys, or all of its visible ones if fewer
    assert keep_count(0.2, 2048, 16, visible) == expected


@pytest.mark.parametrize("ratio", [0.013, 0.1, 0.2, 0.333, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("k_min", [1, 16])
def test_max_keep_count_bounds_every_row(ratio, k_min):
    for kv_len in (1, 7, 64, 1000, 2048):
        bound = max_keep_count(ratio, kv_len, k_min)
        assert bound <= kv_len
        assert all(keep_count(ratio, kv_len, k_min, v) <= bound for v in range(kv_len + 1))
        assert bound <= max(k_min, math.ceil(ratio * kv_len)) + 2  # and it is not wasteful


def test_block_attrs_round_trip():
    block = AttentionBlock(3, 14, 2, 64, CausalMode.BOTTOM_RIGHT, 0.125, "float16", KVMap.TILE, True)
    assert AttentionBlock.from_attrs(block.to_attrs()) == block
    assert block.group == 7
