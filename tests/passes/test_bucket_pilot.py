"""BucketPilot and its data: scale grid, cell selection, launch units, structure, errors, numerics."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from tvm import relax

import shadowattn_tvm as sat
from shadowattn_tvm.block import AttentionBlock, CausalMode
from shadowattn_tvm.calibrate import LayerProfile, SparsityProfile
from shadowattn_tvm.npu import (BucketGrid, GivenCosts, GridCenter, GridOptions, KVBucketError, NPUOptions, ScaleStats,
                                plan_units, select_cell)
from shadowattn_tvm.npu.buckets import SYNTHETIC_SPREAD
from shadowattn_tvm.npu.reference import bucket_scales
from shadowattn_tvm.passes import DetectAttention, SplitSparseAttention
from shadowattn_tvm.passes.bucket_pilot import BucketPilot
from shadowattn_tvm.ir_attrs import npu_graphs
from shadowattn_tvm.npu_abi import ARG_GRAPHS, ARG_STAGE, NPU_RUN, graph_names
from shadowattn_tvm.runtime import lanes  # noqa: F401  (registers the NPU lane's functions the VM calls)
from shadowattn_tvm.testing import AttentionSpec, attention_module, random_inputs, sparse_reference

from ..conftest import run_module
# a Python exception raised in a pass may cross TVM's FFI as itself or as a RuntimeError
PASS_ERROR = (ValueError, RuntimeError)

STATS = ScaleStats(q_mean=(0.02, 0.03, 0.04, 0.05), q_std=(0.004, 0.002, 0.004, 0.002),
                   k_mean=(0.06, 0.08), k_std=(0.01, 0.01))


def _stats_of(spec, inputs):
    q, k = (x.transpose(0, 2, 1, 3) for x in inputs[:2])
    half = q.shape[2] // 2
    return ScaleStats.from_samples([q[:, :, :half], q[:, :, half:]], [k[:, :, :half], k[:, :, half:]])


# ------------------------------------------------------------------ grid and selection
def test_layer_grid_is_mean_plus_minus_half_pooled_std():
    grid = BucketGrid.build(0, STATS)
    assert grid.num_cells == 9
    q_centre, q_sigma = np.mean(STATS.q_mean), np.sqrt(np.mean(np.square(STATS.q_std)))
    k_centre, k_sigma = np.mean(STATS.k_mean), np.sqrt(np.mean(np.square(STATS.k_std)))
    q_values = sorted({s[0] for s in grid.q_scales})
    k_values = sorted({s[0] for s in grid.k_scales})
    np.testing.assert_allclose(q_values, q_centre + np.array([-0.5, 0, 0.5]) * q_sigma, rtol=1e-6)
    np.testing.assert_allclose(k_values, k_centre + np.array([-0.5, 0, 0.5]) * k_sigma, rtol=1e-6)
    assert all(len(set(cell)) == 1 for cell in grid.q_scales)  # one λQ for every head of the layer
    assert set(grid.offsets) == set(itertools.product((-0.5, 0.0, 0.5), repeat=2))


def test_head_grid_and_clamping():
    options = GridOptions(q_points=5, k_points=1, step=4.0, center=GridCenter.HEAD, floor=0.25)
    grid = BucketGrid.build(3, STATS, options)
    assert grid.num_cells == 5 and grid.layer == 3
    mean, std = np.array(STATS.q_mean), np.array(STATS.q_std)
    lowest = np.array(grid.q_scales[0])  # mean - 8 σ: heads 0 and 2 go negative and are clamped
    np.testing.assert_allclose(lowest, np.maximum(mean - 8 * std, 0.25 * mean), rtol=1e-6)
    assert lowest[0] == pytest.approx(0.25 * mean[0]) and lowest[1] == pytest.approx(mean[1] - 8 * std[1])
    np.testing.assert_allclose(grid.q_scales[2], STATS.q_mean, rtol=1e-6)  # the centre is the head's own mean
    assert all(s > 0 for cell in grid.q_scales + grid.k_scales for s in cell)


@pytest.mark.parametrize("seed", range(8))
def test_select_cell_is_nearest_by_summed_mse(seed):
    rng = np.random.default_rng(seed)
    fused = int(rng.integers(1, 8))
    table = rng.uniform(0.01, 0.1, (9, fused + 1)).astype(np.float32)
    q_actual, k_actual = rng.uniform(0.01, 0.1, fused), float(rng.uniform(0.01, 0.1))
    err = [sum((q_actual[h] - table[c, h]) ** 2 + (k_actual - table[c, fused]) ** 2 for h in range(fused))
           for c in range(9)]
    assert select_cell(table, q_actual, k_actual) == int(np.argmin(err))


def test_select_cell_ties_take_the_lowest_index_and_shapes_are_checked():
    table = np.array([[1.0, 1.0], [3.0, 1.0], [1.0, 1.0]], np.float32)
    assert select_cell(table, [2.0], 1.0) == 0
    with pytest.raises(ValueError, match="need 1 actual q scales"):
        select_cell(table, [1.0, 2.0], 1.0)


def test_scale_statistics_from_profile_and_samples():
    layer = LayerProfile((0.2,) * 4, q_scales=(0.1, 0.2, 0.3, 0.4), k_scales=(0.5, 0.6))
    stats = ScaleStats.from_profile(layer)
    assert stats.q_std == pytest.approx(tuple(SYNTHETIC_SPREAD * s for s in layer.q_scales))
    assert ScaleStats.from_profile(LayerProfile((0.2,) * 4)) is None
    # a spread of zero everywhere (the shipped SmolLM2 profile has one) is no spread: synthetic too,
    # else the nine grid cells would be one graph; a measured spread is kept
    zero = LayerProfile((0.2,) * 4, q_scales=layer.q_scales, k_scales=layer.k_scales, q_scale_std=(0.0,) * 4,
                        k_scale_std=(0.0,) * 2)
    assert ScaleStats.from_profile(zero).k_std == pytest.approx(tuple(SYNTHETIC_SPREAD * s for s in layer.k_scales))
    grid = BucketGrid.build(0, ScaleStats.from_profile(zero))
    assert len({(grid.q_scales[c], grid.k_scales[c]) for c in range(grid.num_cells)}) == 9
    measured = LayerProfile((0.2,) * 4, q_scales=layer.q_scales, k_scales=layer.k_scales,
                            q_scale_std=(0.01,) * 4, k_scale_std=(0.0, 0.02))
    assert ScaleStats.from_profile(measured).k_std == (0.0, 0.02)
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal((1, 2, 8, 4)) * (i + 1) for i in range(3)]
    sampled = ScaleStats.from_samples(windows, windows)
    per_window = np.array([np.abs(w).max(axis=(0, 2, 3)) / 127 for w in windows])
    np.testing.assert_allclose(sampled.q_mean, per_window.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sampled.k_std, per_window.std(0), rtol=1e-5)


# ------------------------------------------------------------------ launch units
@pytest.mark.parametrize("causal,q_len,kv_len", [(CausalMode.TOP_LEFT, 100, 100), (CausalMode.BOTTOM_RIGHT, 40, 90),
                                                 (CausalMode.TOP_LEFT, 64, 64)])
def test_causal_chunks_end_on_the_kv_ladder(causal, q_len, kv_len):
    block = AttentionBlock(0, 6, 2, 16, causal, 0.25, "float32")
    units = plan_units(block, 1, q_len, kv_len, [0.3] * 6, 4, (32, 64, 96, 128), q_chunk=16)
    offset = kv_len - q_len if causal == CausalMode.BOTTOM_RIGHT else 0
    for u in units:
        # the score tile's bottom-right alignment is the chunk's true causal offset
        assert u.kv_len - u.q_rows == u.row0 + offset
        assert u.kv_len in (32, 64, 96, 128) and u.rows <= u.q_rows and u.kv_valid == min(kv_len, u.kv_len)
        assert u.heads == tuple(range(u.kv_head * 3, u.kv_head * 3 + 3))
    rows = sorted((u.row0, u.row0 + u.rows) for u in units if u.kv_head == 0)
    assert rows[0][0] == 0 and rows[-1][1] == q_len and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert len({u.key for u in units}) == len(units)


def test_kv_length_beyond_the_largest_bucket_is_a_clear_error():
    spec = AttentionSpec(q_len=80, gqa="expand", mask="causal_where")
    options = NPUOptions(kv_buckets=(32, 64), stats=STATS, costs=GivenCosts())
    with pytest.raises(PASS_ERROR, match=r"KV length 80 is beyond the largest NPU KV bucket 64"):
        sat.pipeline(keep=0.2, lower=False, npu=options)(attention_module(spec))
    with pytest.raises(KVBucketError, match="must be one of the NPU KV buckets"):
        plan_units(AttentionBlock(0, 4, 2, 16, CausalMode.NONE, 0.25, "float32"), 1, 48, 48, [0.2] * 4, 4,
                   (32, 64), 16)


def test_missing_scale_statistics_say_how_to_get_them():
    spec = AttentionSpec(q_len=32, gqa="expand", mask="causal_where")
    options = NPUOptions(kv_buckets=(32,), costs=GivenCosts())
    with pytest.raises(PASS_ERROR, match="ScaleStats.from_samples"):
        sat.pipeline(keep=0.2, lower=False, npu=options)(attention_module(spec))


# ------------------------------------------------------------------ structure
def _bucketed(spec, options, profile=None, keep=0.25, selection="head"):
    mod = DetectAttention()(attention_module(spec))
    mod = SplitSparseAttention(profile or SparsityProfile.uniform(keep), k_min=4, selection=selection)(mod)
    bucket = BucketPilot(options, profile, k_min=4)
    return bucket, bucket(mod)


def test_structure_graphs_and_units():
    spec = AttentionSpec(q_len=64, head_dim=16, gqa="expand", mask="causal_where")
    options = NPUOptions(kv_buckets=(32, 64), stats=STATS, costs=GivenCosts())
    bucket, mod = _bucketed(spec, options)
    assert relax.analysis.check_well_formed(mod)
    names = {gv.name_hint for gv in mod.functions}
    assert "sat_pilot_L0" not in names and "sat_npu_block_L0" in names
    block_fn = mod["sat_npu_block_L0"]
    assert str(block_fn.attrs["shadowattn.kind"]) == "npu_block"
    runs = [b.value for b in block_fn.body.blocks[0].bindings
            if isinstance(b.value, relax.Call) and isinstance(b.value.args[0], relax.ExternFunc)
            and str(b.value.args[0].global_symbol) == NPU_RUN]
    assert [str(r.args[1].value) for r in runs] == ["L0.b0.g0.c0", "L0.b0.g0.c1", "L0.b0.g1.c0", "L0.b0.g1.c1"]
    # 9 cells x 2 shapes (32 and 64 keys), shared by both KV groups (one scale per launch), read from the IR
    graphs = npu_graphs(mod)
    assert len(graphs) == 18 and set(graphs) <= names
    grid = BucketGrid.build(0, STATS)
    for name, params in graphs.items():
        cell = int(name.rsplit("_c", 1)[1])
        assert params["q_scales"] == pytest.approx([grid.q_scales[cell][0]] * 2)
        assert params["k_scale"] == pytest.approx(grid.k_scales[cell][0])
        assert params["kv_len"] in (32, 64) and params["q_chunk"] == 32 and params["fused"] == 2
        assert mod[name].attrs["tirx.is_scheduled"]
    for run in runs:  # each launch carries all nine candidate graphs, in cell order
        assert run.args[1 + ARG_STAGE].name_hint == "sat_npu_stage"
        graphs = [a.name_hint for a in run.args[2 + ARG_STAGE:]]
        assert len(graphs) == 9 and all(g.endswith(f"_c{i}") for i, g in enumerate(graphs))
        assert graph_names(run.args[1 + ARG_GRAPHS].value) == graphs  # the NPU library's symbols, by cell


def test_profile_scales_build_the_grid():
    spec = AttentionSpec(q_len=32, head_dim=16, gqa="expand", mask="causal_where")
    profile = SparsityProfile(keep=0.25, layers=(LayerProfile((0.25,) * 4, STATS.q_mean, STATS.k_mean,
                                                              q_scale_std=STATS.q_std, k_scale_std=STATS.k_std),))
    options = NPUOptions(kv_buckets=(32,), costs=GivenCosts(), grid=GridOptions(q_points=1, k_points=1))
    _, mod = _bucketed(spec, options, profile)
    (params,) = npu_graphs(mod).values()
    assert params["q_scales"][0] == pytest.approx(np.mean(STATS.q_mean))


# ------------------------------------------------------------------ numerics (synchronous launches)
NUMERIC_SPECS = [
    AttentionSpec(q_len=48, head_dim=16, gqa="expand", mask="causal_where"),
    AttentionSpec(q_len=40, head_dim=16, gqa="tile", mask="padding", batch=2),
    AttentionSpec(q_len=20, kv_len=52, heads=6, kv_heads=3, head_dim=16, mask="causal_where"),
]


# per head on every form; group selection (a launch unit is one KV group: its rows are ranked once
# for the group's heads, with the chosen cell's scales) on tiled GQA + padding mask + batch 2 and
# on causal with kv_len > q_len
NUMERIC_CASES = [(spec, "head") for spec in NUMERIC_SPECS] + [(spec, "group") for spec in NUMERIC_SPECS[1:]]


@pytest.mark.parametrize("spec,selection", NUMERIC_CASES,
                         ids=lambda x: f"{x.gqa}-{x.mask}-b{x.batch}" if isinstance(x, AttentionSpec) else x)
def test_bucketed_block_equals_numpy_reference_with_the_chosen_bucket_scales(spec, selection):
    inputs = random_inputs(spec, seed=7)
    stats = _stats_of(spec, inputs)
    grid_options = GridOptions(q_points=2, k_points=2)
    options = NPUOptions(kv_buckets=(16, 32, 48, 64), q_chunk=16, stats=stats, costs=GivenCosts(), grid=grid_options)
    ratios = [0.3, 0.1, 0.4, 0.2, 0.25, 0.35][:spec.heads]
    profile = SparsityProfile(keep=0.25, layers=(LayerProfile(tuple(ratios)),))
    _, mod = _bucketed(spec, options, profile, selection=selection)
    names = [gv.name_hint for gv in mod.functions]
    assert any(n.startswith("sat_topk_group") for n in names) == (selection == "group")
    out = run_module(mod, inputs, sat.lowering())
    q, k = (x.transpose(0, 2, 1, 3) for x in inputs[:2])
    q_scales, k_scales, _ = bucket_scales(spec.block(), BucketGrid.build(0, stats, grid_options), q, k)
    expected, idx, _ = sparse_reference(spec, inputs, ratios, 4, q_scales=q_scales, k_scales=k_scales,
                                        selection=selection)
    assert idx.shape[1] == (spec.kv_heads if selection == "group" else spec.heads)
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)
