"""Every kernel, under the schedule we ship, against the numpy reference (exact where integer)."""
from __future__ import annotations

import numpy as np
import pytest
import tvm

from shadowattn_tvm.block import AttentionBlock, CausalMode, KVMap, max_keep_count
from shadowattn_tvm.ops import pilot, quantize, reference, sparse_attention, topk
from shadowattn_tvm.targets import cpu_kernels as cpu

from ..conftest import build_prim

DEV = tvm.cpu()


def _t(a):
    return tvm.runtime.tensor(np.ascontiguousarray(a), DEV)


def _empty(shape, dtype):
    return tvm.runtime.empty(tuple(int(s) for s in shape), dtype, DEV)


def _block(causal=CausalMode.BOTTOM_RIGHT, heads=6, kv_heads=2, d=32, dtype="float32", kv_map=KVMap.INTERLEAVE,
           mask=False):
    return AttentionBlock(0, heads, kv_heads, d, causal, d ** -0.5, dtype, kv_map, mask)


def _qkv(rng, block, sq, skv, batch=1):
    q = rng.standard_normal((batch, block.num_heads, sq, block.head_dim)).astype(block.dtype)
    k = rng.standard_normal((batch, block.num_kv_heads, skv, block.head_dim)).astype(block.dtype)
    v = rng.standard_normal((batch, block.num_kv_heads, skv, block.head_dim)).astype(block.dtype)
    return q, k, v


def _sym(n):
    return tvm.tirx.Var(n, "int64")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("symbolic", [False, True])
def test_absmax_and_quantize(rng, dtype, symbolic):
    block = _block(dtype=dtype)
    q, k, _ = _qkv(rng, block, 40, 40, batch=2)
    q[:, 1] = 0  # an all-zero head gets scale 1, not a division by zero
    seq = _sym("s") if symbolic else 40
    amax = build_prim(cpu.schedule_absmax(quantize.absmax_scale((2, 6, seq, 32), dtype)))
    scale = _empty((6,), "float32")
    amax(_t(q), scale)
    np.testing.assert_array_equal(scale.numpy(), reference.absmax_scale(q))
    quant = build_prim(cpu.schedule_quantize(quantize.quantize((2, 6, seq, 32), dtype)))
    out = _empty(q.shape, "int8")
    quant(_t(q), scale, out)
    np.testing.assert_array_equal(out.numpy(), reference.quantize(q, scale.numpy()))
    quant_t = build_prim(cpu.schedule_quantize(quantize.quantize((2, 2, seq, 32), dtype, transpose=True)))
    ks = reference.absmax_scale(k)
    out_t = _empty((2, 2, 32, 40), "int8")
    quant_t(_t(k), _t(ks), out_t)
    np.testing.assert_array_equal(out_t.numpy().transpose(0, 1, 3, 2), reference.quantize(k, ks))


def test_absmax_is_race_free_under_parallel_heads(rng):
    """A global abs-max inside a parallel head loop raced in dlight's rule: ours must be exact, always."""
    x = rng.standard_normal((1, 16, 512, 64)).astype("float32")
    x[:, :, 7] *= 50  # the max sits in a different place per head
    amax = build_prim(cpu.schedule_absmax(quantize.absmax_scale(x.shape, "float32")))
    expected = reference.absmax_scale(x)
    for _ in range(5):
        scale = _empty((16,), "float32")
        amax(_t(x), scale)
        np.testing.assert_array_equal(scale.numpy(), expected)


def _visible_equal(got, expected, block, sq, skv):
    vis = np.broadcast_to(reference.visible(block, sq, skv), got.shape)
    np.testing.assert_array_equal(np.where(vis, got, 0), np.where(vis, expected, 0))


@pytest.mark.parametrize("kv_map", [KVMap.INTERLEAVE, KVMap.TILE])
@pytest.mark.parametrize("sq,skv", [(64, 64), (24, 96), (50, 50)])
def test_pilot_scores_exact(rng, kv_map, sq, skv):
    block = _block(kv_map=kv_map)
    q, k, _ = _qkv(rng, block, sq, skv)
    qs, ks = reference.absmax_scale(q), reference.absmax_scale(k)
    q8, k8 = reference.quantize(q, qs), reference.quantize(k, ks)
    func = build_prim(cpu.schedule_pilot(pilot.pilot_scores(block, q.shape, skv)))
    out = _empty((1, 6, sq, skv), "int32")
    func(_t(q8), _t(k8.transpose(0, 1, 3, 2)), out)
    _visible_equal(out.numpy(), reference.pilot_scores(q8, k8, block), block, sq, skv)


def test_pilot_symbolic_length(rng):
    block = _block()
    q, k, _ = _qkv(rng, block, 37, 37)
    q8, k8 = reference.quantize(q, reference.absmax_scale(q)), reference.quantize(k, reference.absmax_scale(k))
    n = _sym("n")
    func = build_prim(cpu.schedule_pilot(pilot.pilot_scores(block, (1, 6, n, 32), n)))
    out = _empty((1, 6, 37, 37), "int32")
    func(_t(q8), _t(k8.transpose(0, 1, 3, 2)), out)
    _visible_equal(out.numpy(), reference.pilot_scores(q8, k8, block), block, 37, 37)


def _scores(rng, block, sq, skv, ties=False):
    high = 3 if ties else 4000  # few distinct values: many ties to break by index
    return rng.integers(-high, high, (1, block.num_heads, sq, skv)).astype("int32")


@pytest.mark.parametrize("causal", list(CausalMode))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k_min", [1, 8])
def test_topk_matches_reference(rng, causal, ties, k_min):
    block = _block(causal=causal)
    sq, skv = 40, 72
    scores = _scores(rng, block, sq, skv, ties)
    ratios = np.array([0.1, 0.2, 0.25, 0.5, 0.9, 1.0])
    top = max_keep_count(ratios.max(), skv, k_min)
    func = build_prim(topk.topk_indices(block, k_min))
    idx = _empty((1, 6, sq, top), "int32")
    func(_t(scores), _t(ratios), idx)
    expected = reference.topk_indices(scores, ratios, block, k_min, top)
    np.testing.assert_array_equal(idx.numpy(), expected)


def test_topk_never_writes_past_a_narrow_index_tensor(rng):
    """A ratio asking for more keys than idx holds keeps the best K (the two-lane cost profiler
    once passed 0.2 for a 16-wide unit: heap corruption at 64 tokens)."""
    block = _block(causal=CausalMode.NONE)
    sq, skv, width = 8, 64, 5
    scores = _scores(rng, block, sq, skv)
    ratios = np.full(6, 0.5)  # 32 keys per row
    whole = tvm.runtime.tensor(np.full(6 * sq * width + 64, 7, "int32"))
    idx = whole._create_view((1, 6, sq, width))  # a guard of 64 sentinels follows the last row
    build_prim(topk.topk_indices(block, 1))(_t(scores), _t(ratios), idx)
    np.testing.assert_array_equal(idx.numpy(), reference.topk_indices(scores, ratios, block, 1, width))
    np.testing.assert_array_equal(whole.numpy()[6 * sq * width:], 7)


@pytest.mark.parametrize("mask_shape", [(1, 1), (2, 1), (2, 6)])
def test_topk_with_additive_mask(rng, mask_shape):
    block = _block(causal=CausalMode.NONE, mask=True)
    sq, skv = 16, 48
    scores = np.concatenate([_scores(rng, block, sq, skv)] * 2)
    mask = rng.standard_normal(mask_shape + (sq, skv)).astype("float32")
    mask[rng.random(mask.shape) < 0.3] = -1e9  # padded / hidden keys
    qs, ks = np.full(6, 0.01, "float32"), np.array([0.02, 0.03], "float32")
    ratios = np.full(6, 0.25)
    top = max_keep_count(0.25, skv, 4)
    func = build_prim(topk.topk_indices(block, 4, mask.shape))
    idx = _empty((2, 6, sq, top), "int32")
    func(_t(scores), _t(ratios), _t(qs), _t(ks), _t(mask), idx)
    expected = reference.topk_indices(scores, ratios, block, 4, top, mask=mask, q_scale=qs, k_scale=ks)
    np.testing.assert_array_equal(idx.numpy(), expected)
    assert (np.take_along_axis(np.broadcast_to(mask, (2, 6, sq, skv)), np.maximum(idx.numpy(), 0), -1)
            [idx.numpy() >= 0] > -1e4).all(), "a masked key was selected"


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-3)])
@pytest.mark.parametrize("kv_map", [KVMap.INTERLEAVE, KVMap.TILE])
def test_sparse_attention_matches_reference(rng, dtype, tol, kv_map):
    block = _block(dtype=dtype, kv_map=kv_map)
    sq = skv = 48
    q, k, v = _qkv(rng, block, sq, skv)
    ratios = np.full(6, 0.3)
    top = max_keep_count(0.3, skv, 4)
    idx = reference.topk_indices(_scores(rng, block, sq, skv), ratios, block, 4, top)
    func = build_prim(cpu.schedule_sparse_attention(sparse_attention.sparse_attention(block, q.shape, skv, 32, top)))
    out = _empty(q.shape, dtype)
    func(_t(q), _t(k), _t(v), _t(idx), out)
    np.testing.assert_allclose(out.numpy().astype("float64"), reference.sparse_attention(q, k, v, idx, block),
                               rtol=tol, atol=tol)


def test_sparse_attention_with_mask_and_symbolic_lengths(rng):
    block = _block(causal=CausalMode.NONE, mask=True)
    q, k, v = _qkv(rng, block, 20, 20)
    mask = np.where(rng.random((1, 1, 20, 20)) < 0.2, -1e9, 0.1 * rng.standard_normal((1, 1, 20, 20))).astype("float32")
    idx = reference.topk_indices(_scores(rng, block, 20, 20), np.full(6, 0.5), block, 2, 12, mask=mask,
                                 q_scale=np.ones(6, "float32"), k_scale=np.ones(2, "float32"))
    n, top = _sym("n"), _sym("top")
    func = build_prim(cpu.schedule_sparse_attention(
        sparse_attention.sparse_attention(block, (1, 6, n, 32), n, 32, top, mask.shape[:2] + (n, n))))
    out = _empty(q.shape, "float32")
    func(_t(q), _t(k), _t(v), _t(idx), _t(mask), out)
    np.testing.assert_allclose(out.numpy(), reference.sparse_attention(q, k, v, idx, block, mask), rtol=1e-5, atol=1e-5)
