"""Every kernel, under the schedule we ship, against the numpy reference (exact where integer)."""
from __future__ import annotations

import numpy as np
import pytest
import tvm

from shadowattn_tvm.block import AttentionBlock, CausalMode, KVMap, max_keep_count
from shadowattn_tvm.ops import _isa, pilot, quantize, reference, sparse_attention, topk, topk_group
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


@pytest.mark.parametrize("masked", [False, True])
def test_topk_kernels_prefetch_the_next_rows_scores(masked):
    """Each row's first pass over its scores is a DRAM read: the top-k kernels prefetch the next
    row (the group kernel: its heads' next rows) while ranking this one (-15..23 % at 1k-4k tokens)."""
    block = _block(causal=CausalMode.NONE, mask=masked)
    mask_shape = (1, 1, 8, 8) if masked else None
    for func, scores_of_next in ((topk.topk_indices(block, 4, mask_shape), "NS["),
                                 (topk_group.topk_group_indices(block, 4, mask_shape), "inext, c")):
        prefetches = [line for line in func.script().splitlines() if "llvm.prefetch" in line]
        assert any(scores_of_next in line for line in prefetches), prefetches
        assert any("MASK[" in line for line in prefetches) == masked, prefetches


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


def test_masked_selection_search_survives_extreme_logits(rng):
    """The masked selectors search float keys by interpolating their values: huge, infinite-sum,
    tied and near-threshold logits still give the reference's exact selection (per head and group)."""
    block = _block(causal=CausalMode.NONE, mask=True)
    sq, skv = 6, 300
    scores = _scores(rng, block, sq, skv)
    mask = np.zeros((1, 1, sq, skv), "float32")
    mask[..., ::7] = 1e30  # values whose squares overflow float32 (the first guess is not finite)
    mask[..., 1::5] = -9999.0  # valid, just above MASKED_BELOW
    mask[..., 2::11] = -1e9  # masked
    mask[:, :, 3] = 5.0  # a row with one mask value: its order is the scores'
    scores[:, :, 4] = 7  # a row of tied scores
    qs, ks = np.full(6, 0.01, "float32"), np.array([0.02, 0.03], "float32")
    top = max_keep_count(0.25, skv, 4)
    idx = _empty((1, 6, sq, top), "int32")
    build_prim(topk.topk_indices(block, 4, mask.shape))(_t(scores), _t(np.full(6, 0.25)), _t(qs), _t(ks), _t(mask), idx)
    expected = reference.topk_indices(scores, np.full(6, 0.25), block, 4, top, mask=mask, q_scale=qs, k_scale=ks)
    np.testing.assert_array_equal(idx.numpy(), expected)
    gidx = _empty((1, 2, sq, top), "int32")
    build_prim(topk_group.topk_group_indices(block, 4, mask.shape))(_t(scores), _t(np.full(2, 0.25)), _t(qs), _t(ks), _t(mask), gidx)
    expected = reference.topk_group_indices(scores, np.full(2, 0.25), block, 4, top, qs, ks, mask=mask)
    np.testing.assert_array_equal(gidx.numpy(), expected)


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


# ----------------------------------------------------------------------------- vector widths, int16, group mode
# results never depend on the width: every configuration runs here (AVX-512 and SSE in the slow set)
ISAS = [_isa.AVX2, _isa.NEON, pytest.param(_isa.AVX512, marks=pytest.mark.slow), pytest.param(_isa.SSE, marks=pytest.mark.slow)]
_name = lambda i: i.name  # noqa: E731


@pytest.mark.parametrize("isa", ISAS, ids=_name)
@pytest.mark.parametrize("out_dtype", ["int32", "int16"])
def test_pilot_scores_every_width(rng, isa, out_dtype):
    block = _block(kv_map=KVMap.TILE)
    q, k, _ = _qkv(rng, block, 37, 45)
    q8, k8 = reference.quantize(q, reference.absmax_scale(q)), reference.quantize(k, reference.absmax_scale(k))
    q8[0, 0, 0], k8[0, 0, 0] = 127, 127  # the int16 shift must hold the largest |score|
    q8[0, 1, 1], k8[0, 0, 1] = -127, 127
    func = build_prim(cpu.schedule_pilot(pilot.pilot_scores(block, q.shape, 45, out_dtype=out_dtype, isa=isa)))
    out = _empty((1, 6, 37, 45), out_dtype)
    func(_t(q8), _t(k8.transpose(0, 1, 3, 2)), out)
    _visible_equal(out.numpy(), reference.pilot_scores(q8, k8, block, out_dtype), block, 37, 45)


@pytest.mark.parametrize("isa", ISAS, ids=_name)
@pytest.mark.parametrize("score_dtype", ["int32", "int16"])
@pytest.mark.parametrize("masked", [False, True])
def test_topk_every_width(rng, isa, score_dtype, masked):
    """Unaligned lengths (vector tails), ties (int16 scores tie often), masked and empty rows."""
    block = _block(causal=CausalMode.NONE if masked else CausalMode.BOTTOM_RIGHT, mask=masked)
    sq, skv = 21, 77
    scores = rng.integers(-50, 50, (2, 6, sq, skv)).astype(score_dtype)
    scores[0, 1, :4] = 0  # rows of one value: every pick is a tie
    ratios = np.array([0.1, 0.2, 0.25, 0.5, 0.9, 1.0])
    top = max_keep_count(ratios.max(), skv, 3)
    args, kw = [scores, ratios], {}
    if masked:
        mask = (rng.integers(-8, 8, (2, 1, sq, skv)) / 8).astype("float32")  # exact sums: no rounding ties
        mask[rng.random(mask.shape) < 0.3] = -1e9
        mask[1, 0, 3] = -1e9  # a row without any selectable key
        qs, ks = (2.0 ** -rng.integers(3, 7, 6)).astype("float32"), np.array([2 ** -5, 2 ** -4], "float32")
        args += [qs, ks, mask]
        kw = dict(mask=mask, q_scale=qs, k_scale=ks)
    func = build_prim(topk.topk_indices(block, 3, mask.shape if masked else None, isa=isa, score_dtype=score_dtype))
    idx = _empty((2, 6, sq, top), "int32")
    func(*[_t(a) for a in args], idx)
    np.testing.assert_array_equal(idx.numpy(), reference.topk_indices(scores, ratios, block, 3, top, **kw))


@pytest.mark.parametrize("isa", ISAS, ids=_name)
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-3)])
def test_sparse_attention_every_width(rng, isa, dtype, tol):
    """Rows from dense (early causal rows keep every key) to sparse, -1 holes, 80 keys (tiles, blocks)."""
    block = _block(heads=14, kv_heads=2, d=64, dtype=dtype)
    q, k, v = _qkv(rng, block, 80, 80)
    top = max_keep_count(0.3, 80, 8)
    idx = reference.topk_indices(_scores(rng, block, 80, 80), np.full(14, 0.3), block, 8, top)
    idx[0, 3, 50, 2] = -1  # a hole: ignored
    func = build_prim(sparse_attention.sparse_attention(block, q.shape, 80, 64, top, isa=isa))
    out = _empty(q.shape, dtype)
    func(_t(q), _t(k), _t(v), _t(idx), out)
    np.testing.assert_allclose(out.numpy().astype("float64"), reference.sparse_attention(q, k, v, idx, block),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("group_mode", [False, True], ids=["per_head", "group"])
def test_a_holes_key_never_sets_the_softmax_maximum(rng, group_mode):
    """A -1 hole inside a row's slots is ignored even where key 0, whose logit phase A computes
    for it, scores 2000 above the row's keys: a softmax maximum that saw it would underflow every
    weight (NaN output)."""
    block = _block(causal=CausalMode.TOP_LEFT, heads=6, kv_heads=2, d=32)
    sq = skv = 40
    q, k, v = _qkv(rng, block, sq, skv)
    hk = reference.kv_index(block)[3]
    k[0, hk, 0] = q[0, 3, 30] * (2000 / (block.scale * float(q[0, 3, 30] @ q[0, 3, 30])))
    heads = block.num_kv_heads if group_mode else block.num_heads
    idx = np.full((1, heads, sq, 12), -1, "int32")
    for h in range(heads):
        for i in range(sq):
            keys = np.sort(rng.permutation(np.arange(1, i + 1))[:10])  # never key 0
            idx[0, h, i, :len(keys)] = keys
    row = idx[0, hk if group_mode else 3, 30]
    row[2] = -1  # the hole (key 0 in phase A)
    kernel = sparse_attention.sparse_attention_group if group_mode else sparse_attention.sparse_attention
    func = build_prim(kernel(block, q.shape, skv, 32, 12))
    out = _empty(q.shape, "float32")
    func(_t(q), _t(k), _t(v), _t(idx), out)
    want = (reference.sparse_attention_group if group_mode else reference.sparse_attention)(q, k, v, idx, block)
    np.testing.assert_allclose(out.numpy()[0, :, 1:], want[0, :, 1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_sparse_attention_rows_without_keys_get_the_dense_value(rng, dtype):
    """All-(-1) rows: softmax over every causally allowed key of scale·q·k + mask (fp16 adds in fp16)."""
    block = _block(causal=CausalMode.TOP_LEFT, dtype=dtype, mask=True)
    q, k, v = _qkv(rng, block, 24, 24)
    mask = np.where(rng.random((1, 6, 24, 24)) < 0.5, -1e4, 0.2 * rng.standard_normal((1, 6, 24, 24))).astype(dtype)
    idx = np.full((1, 6, 24, 5), -1, "int32")
    idx[:, :, ::2, 0] = 0  # even rows: key 0 only; odd rows: no key
    func = build_prim(sparse_attention.sparse_attention(block, q.shape, 24, 32, 5, mask.shape))
    out = _empty(q.shape, dtype)
    func(_t(q), _t(k), _t(v), _t(idx), _t(mask), out)
    got = out.numpy().astype("float64")
    np.testing.assert_allclose(got[:, :, ::2], reference.sparse_attention(q, k, v, idx, block, mask)[:, :, ::2],
                               rtol=2e-3, atol=2e-3)
    logits = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k[:, reference.kv_index(block)].astype(np.float64))
    if dtype == "float16":  # the fp16 graph adds its mask in fp16
        logits = ((logits * block.scale).astype(dtype) + mask).astype(np.float64)
    else:
        logits = logits * block.scale + mask
    logits = np.where(reference.visible(block, 24, 24)[0, 0], logits, -np.inf)
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    dense = np.einsum("bhij,bhjd->bhid", prob / prob.sum(-1, keepdims=True), v[:, reference.kv_index(block)])
    np.testing.assert_allclose(got[:, :, 1::2], dense[:, :, 1::2], rtol=2e-3, atol=2e-3)


# every causal mode and both KV maps, each with and without a mask, at two widths
GROUP_CASES = [(c, m, masked) for masked in (False, True) for c, m in zip(CausalMode, [KVMap.INTERLEAVE, KVMap.TILE] * 2)]


@pytest.mark.parametrize("causal,kv_map,masked", GROUP_CASES)
@pytest.mark.parametrize("isa", [_isa.AVX2, pytest.param(_isa.NEON, marks=pytest.mark.slow)], ids=_name)
def test_group_mode_matches_reference(rng, kv_map, causal, masked, isa):
    """Group top-k (one selection per KV head and row) and group sparse attention."""
    block = _block(causal=causal, kv_map=kv_map, mask=masked)
    sq, skv = 21, 53 if causal == CausalMode.BOTTOM_RIGHT else 45
    scores = rng.integers(-3000, 3000, (2, 6, sq, skv)).astype("int16" if masked else "int32")
    qs, ks = (2.0 ** -rng.integers(4, 8, 6)).astype("float32"), np.array([2 ** -6, 2 ** -5], "float32")
    ratios, top = np.array([0.2, 0.35]), max_keep_count(0.35, skv, 3)
    mask = None
    if masked:
        mask = (rng.integers(-8, 8, (2, 1, sq, skv)) / 8).astype("float32")
        mask[rng.random(mask.shape) < 0.3] = -1e9
    func = build_prim(topk_group.topk_group_indices(block, 3, None if mask is None else mask.shape, isa=isa,
                                                    score_dtype=scores.dtype.name))
    idx = _empty((2, 2, sq, top), "int32")
    func(*[_t(a) for a in [scores, ratios, qs, ks] + ([mask] if masked else [])], idx)
    expected = reference.topk_group_indices(scores, ratios, block, 3, top, qs, ks, mask)
    np.testing.assert_array_equal(idx.numpy(), expected)
    q, k, v = _qkv(rng, block, sq, skv, batch=2)
    sparse = build_prim(sparse_attention.sparse_attention_group(block, q.shape, skv, 32, top,
                                                                None if mask is None else mask.shape, isa=isa))
    out = _empty(q.shape, "float32")
    sparse(*[_t(a) for a in [q, k, v, expected] + ([mask] if masked else [])], out)
    rows = (expected >= 0).any(-1)[:, reference.kv_index(block)]  # the others: dense fallback, tested above
    np.testing.assert_allclose(out.numpy()[rows], reference.sparse_attention_group(q, k, v, expected, block, mask)[rows],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pv_tile", [(2, 4), (2, 2), (1, 1)], ids=lambda t: f"{t[0]}heads_x{t[1]}vectors")
def test_group_pv_tiles_that_leave_a_rest_chunk(rng, pv_tile):
    """Group p·V takes a row's heads HB at a time: with 3 heads per group, 2 (and 1) leave a rest
    chunk, as Qwen2's group of 7 does on AVX2 (3 + 3 + 1); every tile gives the reference."""
    from shadowattn_tvm.ops._sparse_cpu import sparse_kernel

    block = _block(causal=CausalMode.TOP_LEFT, kv_map=KVMap.TILE, mask=True)
    sq = skv = 37
    q, k, v = _qkv(rng, block, sq, skv)
    idx = np.full((1, 2, sq, 10), -1, "int32")
    for hk in range(2):
        for i in range(sq):
            keys = np.sort(rng.permutation(i + 1)[:8])  # top-k's layout: ascending, -1 padded
            idx[0, hk, i, :len(keys)] = keys
    mask = (rng.integers(-8, 8, (1, 1, sq, skv)) / 8).astype("float32")
    func = build_prim(sparse_kernel(block, 32, 32, mask.shape, _isa.AVX2, group_mode=True, pv_tile=pv_tile))
    out = _empty(q.shape, "float32")
    func(*[_t(a) for a in [q, k, v, idx, mask]], out)
    np.testing.assert_allclose(out.numpy(), reference.sparse_attention_group(q, k, v, idx, block, mask),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lanes", [1, 8])
def test_exp_neg_is_within_two_ulp_of_exp(lanes):
    """The kernels' softmax exp (x <= 0), vectorised and scalar, against float64 exp: within 2 ulp
    over [-87, 0], 0-ish below (clamped at -87), exactly 1 at 0."""
    from tvm.script import tirx as T

    @T.prim_func
    def exp_of(x_h: T.handle, y_h: T.handle):
        n = T.int64()
        X = T.match_buffer(x_h, (n,), "float32")
        Y = T.match_buffer(y_h, (n,), "float32")
        for c in range(n // lanes):
            Y[T.Ramp(c * lanes, 1, lanes) if lanes > 1 else c] = _isa.exp_neg(X[T.Ramp(c * lanes, 1, lanes) if lanes > 1 else c])

    x = np.concatenate([np.linspace(-87, 0, 1 << 20), [-1e30, -np.inf, -100, -87.5, 0.0, -1e-30]]).astype("float32")
    x = np.concatenate([x, np.zeros((-len(x)) % 8, "float32")])
    y = _empty(x.shape, "float32")
    build_prim(exp_of)(_t(x), y)
    got, want = y.numpy().astype(np.float64), np.exp(x.astype(np.float64))
    inside = x >= -87
    assert np.abs(got[inside] / want[inside] - 1).max() <= 2 * 2.0 ** -23
    assert (got[~inside] < 1e-37).all() and (got[~inside] >= 0).all()
    assert got[x == 0].min() == 1.0
