"""NumPy reference of the bucketed pilot: which cell each launch group takes, and its scales.

With those scales the bucketed build must equal the plain shadowAttn reference
(`testing.sparse_reference(..., q_scales=, k_scales=)`): a unit's chunked top-k sees the same
visible keys, the same int8 scores and the same ranking as a full-row top-k.
"""
from __future__ import annotations

import numpy as np

from ..block import AttentionBlock, KVMap
from ..ops import reference
from .buckets import BucketGrid, select_cell


def group_heads(block: AttentionBlock, kv_head: int) -> list:
    if block.kv_map == KVMap.TILE:
        return [kv_head + f * block.num_kv_heads for f in range(block.group)]
    return [kv_head * block.group + f for f in range(block.group)]


def bucket_scales(block: AttentionBlock, grid: BucketGrid, q: np.ndarray, k: np.ndarray):
    """(q_scales [H], k_scales [Hkv], cell per KV group) the NPU lane uses for BHSD q, k."""
    q_actual, k_actual = reference.absmax_scale(q), reference.absmax_scale(k)
    q_scales = np.zeros(block.num_heads, np.float32)
    k_scales = np.zeros(block.num_kv_heads, np.float32)
    cells = []
    for g in range(block.num_kv_heads):
        heads = group_heads(block, g)
        cell = select_cell(grid.cell_table(heads, g), q_actual[heads], k_actual[g])
        q_scales[heads] = [grid.q_scales[cell][h] for h in heads]
        k_scales[g] = grid.k_scales[cell][g]
        cells.append(cell)
    return q_scales, k_scales, cells


__all__ = ["bucket_scales", "group_heads"]
