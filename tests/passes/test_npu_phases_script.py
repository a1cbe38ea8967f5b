"""Phases 3 and 4 as before/expected TVMScript: BucketPilot, then PipelineHeads, on one tiny block.

The "before" is phases 0-2 (DetectAttention, SplitSparseAttention) of one causal GQA block: 2 query
heads on 1 KV head, 16 tokens, head_dim 8. With KV buckets (8, 16) the causal rows fall into two
launch units, chunk 0 (rows 0-7, 8 keys) and chunk 1 (rows 8-15, 16 keys); a 1 x 2 (λQ, λK) grid
gives each launch two candidate graphs. The expected Relax functions are written out by hand below
and compared structurally; the PrimFuncs they call (graphs, staging, gather, top-k, sparse
attention) are the output module's own, taken by global var. Also checked: a module without
pilots goes through either pass unchanged.
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from shadowattn_tvm.calibrate import SparsityProfile
from shadowattn_tvm.ir_attrs import PLAN, layer_plans
from shadowattn_tvm.npu import BucketGrid, GivenCosts, GridOptions, NPUOptions, ScaleStats
from shadowattn_tvm.passes import DetectAttention, SplitSparseAttention
from shadowattn_tvm.passes.bucket_pilot import BucketPilot
from shadowattn_tvm.passes.pipeline_heads import PipelineHeads
from shadowattn_tvm.testing import AttentionSpec, attention_module

SPEC = AttentionSpec(heads=2, kv_heads=1, head_dim=8, q_len=16, gqa="expand", mask="causal_where")
STATS = ScaleStats(q_mean=(0.02, 0.03), q_std=(0.004, 0.002), k_mean=(0.06,), k_std=(0.01,))
GRID = GridOptions(q_points=1, k_points=2)
# chunk 1 is NPU-light and CPU-heavy, so Johnson's rule launches it before chunk 0 (1 ms / 1 ms)
COSTS = GivenCosts(npu_ms=1.0, cpu_ms=1.0, per_key=(("L0.b0.g0.c1", 0.5, 3.0),))
OPTIONS = NPUOptions(kv_buckets=(8, 16), stats=STATS, costs=COSTS, grid=GRID)
KEEP, K_MIN = 0.25, 4
SCALE = float(np.float32(SPEC.head_dim ** -0.5))  # DetectAttention reads the graph's f32 constant
BLOCK_ATTRS = {"shadowattn.causal": "bottom_right", "shadowattn.dtype": "float32", "shadowattn.has_mask": False,
               "shadowattn.head_dim": 8, "shadowattn.kind": "npu_block", "shadowattn.kv_map": "interleave",
               "shadowattn.layer": 0, "shadowattn.npu_cells": 2, "shadowattn.npu_units": 2,
               "shadowattn.num_heads": 2, "shadowattn.num_kv_heads": 1, "shadowattn.scale": SCALE,
               "shadowattn.selection": "head"}


def _phase2():
    mod = DetectAttention()(attention_module(SPEC))
    return SplitSparseAttention(SparsityProfile.uniform(KEEP), k_min=K_MIN)(mod)


def _phase3():
    before = _phase2()
    relax.analysis.well_formed(before)  # raises on the first violation
    after = BucketPilot(OPTIONS, k_min=K_MIN)(before)
    relax.analysis.well_formed(after)  # raises on the first violation
    return after


class _Kernels:
    """The output module's PrimFuncs by role, and the constants the launches and top-k read."""

    def __init__(self, mod):
        gvs = {gv.name_hint: gv for gv in mod.functions}
        self.absmax_q, self.absmax_k = gvs["sat_absmax"], gvs["sat_absmax1"]  # [1,2,16,8] -> [2], [1,1,16,8] -> [1]
        self.stage, self.gather, self.topk = gvs["sat_npu_stage"], gvs["sat_npu_gather"], gvs["sat_topk"]
        # phase 2's full-block sparse kernel held the plain name while BucketPilot added the per-unit one
        self.sparse = gvs["sat_sparse_attention1"]
        self.g8 = [gvs[f"sat_npu_L0_f2_q8_kv8_c{c}"] for c in range(2)]
        self.g16 = [gvs[f"sat_npu_L0_f2_q8_kv16_c{c}"] for c in range(2)]
        # both units fuse heads (0, 1) over KV head 0: the same per-cell (λQ0, λQ1, λK) rows
        self.cells = relax.const(BucketGrid.build(0, STATS, GRID).cell_table((0, 1), 0))
        # a row keeps ceil(0.25 * 16) keys of the real length, whatever the bucket it is padded to
        self.ratio8 = relax.const(np.full(2, KEEP * 16 / 8), "float64")
        self.ratio16 = relax.const(np.full(2, KEEP * 16 / 16), "float64")


def _expected_bucketed_block(kn: _Kernels) -> relax.Function:
    """BucketPilot's block: scales, then unit by unit a synchronous npu_run over the unit's cell
    graphs, the unit's Q rows and its group's K/V (gathered once), top-k, sparse attention; the
    two chunks' outputs concatenated along rows."""
    absmax_q, absmax_k, stage, gather, topk, sparse = kn.absmax_q, kn.absmax_k, kn.stage, kn.gather, kn.topk, kn.sparse
    g8_c0, g8_c1, g16_c0, g16_c1 = *kn.g8, *kn.g16
    cells0, cells1, ratio8, ratio16 = kn.cells, kn.cells, kn.ratio8, kn.ratio16
    attrs = BLOCK_ATTRS

    @R.function(private=True)
    def block(q: R.Tensor((1, 2, 16, 8), "float32"), k: R.Tensor((1, 1, 16, 8), "float32"),
              v: R.Tensor((1, 1, 16, 8), "float32")) -> R.Tensor((1, 2, 16, 8), "float32"):
        R.func_attr(attrs)
        with R.dataflow():
            q_scale = R.call_tir(absmax_q, (q,), out_ty=R.Tensor((2,), "float32"))
            k_scale = R.call_tir(absmax_k, (k,), out_ty=R.Tensor((1,), "float32"))
            # unit L0.b0.g0.c0: geometry (layer, batch, head0, stride, kv_head, row0, rows, kv_valid,
            # fused, q_rows, kv_len, top_k, chunk)
            run0 = R.call_pure_packed(
                "shadowattn.npu_run", R.str("L0.b0.g0.c0"), R.shape([0, 0, 0, 1, 0, 0, 8, 8, 2, 8, 8, 5, 0]),
                q, k, q_scale, k_scale, cells0, R.str("sat_npu_L0_f2_q8_kv8_c0,sat_npu_L0_f2_q8_kv8_c1"),
                stage, g8_c0, g8_c1,
                ty_args=(R.Tuple(R.Tensor((1, 2, 8, 8), "int32"), R.Tensor((2,), "float32"),
                                 R.Tensor((1,), "float32")),))
            scores0 = run0[0]
            q0 = R.call_tir(gather, (q, 0, 0, 1, 0, 8, 8), out_ty=R.Tensor((1, 2, 8, 8), "float32"))
            # causal chunks see every key up to their end: the group's whole K and V, cut to 16
            k_g0 = R.call_tir(gather, (k, 0, 0, 0, 0, 16, 8), out_ty=R.Tensor((1, 1, 16, 8), "float32"))
            v_g0 = R.call_tir(gather, (v, 0, 0, 0, 0, 16, 8), out_ty=R.Tensor((1, 1, 16, 8), "float32"))
            idx0 = R.call_tir(topk, (scores0, ratio8), out_ty=R.Tensor((1, 2, 8, 5), "int32"))
            out0 = R.call_tir(sparse, (q0, k_g0, v_g0, idx0), out_ty=R.Tensor((1, 2, 8, 8), "float32"))
            # unit L0.b0.g0.c1: rows 8-15 on the 16-key graphs; reuses the gathered K and V
            run1 = R.call_pure_packed(
                "shadowattn.npu_run", R.str("L0.b0.g0.c1"), R.shape([0, 0, 0, 1, 0, 8, 8, 16, 2, 8, 16, 5, 1]),
                q, k, q_scale, k_scale, cells1, R.str("sat_npu_L0_f2_q8_kv16_c0,sat_npu_L0_f2_q8_kv16_c1"),
                stage, g16_c0, g16_c1,
                ty_args=(R.Tuple(R.Tensor((1, 2, 8, 16), "int32"), R.Tensor((2,), "float32"),
                                 R.Tensor((1,), "float32")),))
            scores1 = run1[0]
            q1 = R.call_tir(gather, (q, 0, 0, 1, 8, 8, 8), out_ty=R.Tensor((1, 2, 8, 8), "float32"))
            idx1 = R.call_tir(topk, (scores1, ratio16), out_ty=R.Tensor((1, 2, 8, 5), "int32"))
            out1 = R.call_tir(sparse, (q1, k_g0, v_g0, idx1), out_ty=R.Tensor((1, 2, 8, 8), "float32"))
            rows = R.concat((out0, out1), axis=2)
            gv = rows
            R.output(gv)
        return gv

    return block


def _expected_pipelined_block(kn: _Kernels) -> relax.Function:
    """PipelineHeads' block (plan attribute aside): the scales, both launches in plan order (c1, c0),
    then per unit in that order its NPU-free gathers, the wait (re-passing the launch's tensors),
    top-k and sparse attention; the assembly last, in BucketPilot's order (c0 rows first)."""
    absmax_q, absmax_k, stage, gather, topk, sparse = kn.absmax_q, kn.absmax_k, kn.stage, kn.gather, kn.topk, kn.sparse
    g8_c0, g8_c1, g16_c0, g16_c1 = *kn.g8, *kn.g16
    cells0, cells1, ratio8, ratio16 = kn.cells, kn.cells, kn.ratio8, kn.ratio16
    attrs = BLOCK_ATTRS

    @R.function(private=True)
    def block(q: R.Tensor((1, 2, 16, 8), "float32"), k: R.Tensor((1, 1, 16, 8), "float32"),
              v: R.Tensor((1, 1, 16, 8), "float32")) -> R.Tensor((1, 2, 16, 8), "float32"):
        R.func_attr(attrs)
        with R.dataflow():
            q_scale = R.call_tir(absmax_q, (q,), out_ty=R.Tensor((2,), "float32"))
            k_scale = R.call_tir(absmax_k, (k,), out_ty=R.Tensor((1,), "float32"))
            launch1 = R.call_pure_packed(
                "shadowattn.npu_launch", R.str("L0.b0.g0.c1"), R.shape([0, 0, 0, 1, 0, 8, 8, 16, 2, 8, 16, 5, 1]),
                q, k, q_scale, k_scale, cells1, R.str("sat_npu_L0_f2_q8_kv16_c0,sat_npu_L0_f2_q8_kv16_c1"),
                stage, g16_c0, g16_c1, ty_args=(R.Prim("int64"),))
            launch0 = R.call_pure_packed(
                "shadowattn.npu_launch", R.str("L0.b0.g0.c0"), R.shape([0, 0, 0, 1, 0, 0, 8, 8, 2, 8, 8, 5, 0]),
                q, k, q_scale, k_scale, cells0, R.str("sat_npu_L0_f2_q8_kv8_c0,sat_npu_L0_f2_q8_kv8_c1"),
                stage, g8_c0, g8_c1, ty_args=(R.Prim("int64"),))
            # unit c1 while the NPU works: the gathers it needs, in BucketPilot's binding order (K and V,
            # gathered for c0 there, now come first and are still shared)
            k_g0 = R.call_tir(gather, (k, 0, 0, 0, 0, 16, 8), out_ty=R.Tensor((1, 1, 16, 8), "float32"))
            v_g0 = R.call_tir(gather, (v, 0, 0, 0, 0, 16, 8), out_ty=R.Tensor((1, 1, 16, 8), "float32"))
            q1 = R.call_tir(gather, (q, 0, 0, 1, 8, 8, 8), out_ty=R.Tensor((1, 2, 8, 8), "float32"))
            run1 = R.call_pure_packed(
                "shadowattn.npu_wait", launch1, q, k, q_scale, k_scale, cells1,
                ty_args=(R.Tuple(R.Tensor((1, 2, 8, 16), "int32"), R.Tensor((2,), "float32"),
                                 R.Tensor((1,), "float32")),))
            scores1 = run1[0]
            idx1 = R.call_tir(topk, (scores1, ratio16), out_ty=R.Tensor((1, 2, 8, 5), "int32"))
            out1 = R.call_tir(sparse, (q1, k_g0, v_g0, idx1), out_ty=R.Tensor((1, 2, 8, 8), "float32"))
            # unit c0
            q0 = R.call_tir(gather, (q, 0, 0, 1, 0, 8, 8), out_ty=R.Tensor((1, 2, 8, 8), "float32"))
            run0 = R.call_pure_packed(
                "shadowattn.npu_wait", launch0, q, k, q_scale, k_scale, cells0,
                ty_args=(R.Tuple(R.Tensor((1, 2, 8, 8), "int32"), R.Tensor((2,), "float32"),
                                 R.Tensor((1,), "float32")),))
            scores0 = run0[0]
            idx0 = R.call_tir(topk, (scores0, ratio8), out_ty=R.Tensor((1, 2, 8, 5), "int32"))
            out0 = R.call_tir(sparse, (q0, k_g0, v_g0, idx0), out_ty=R.Tensor((1, 2, 8, 8), "float32"))
            rows = R.concat((out0, out1), axis=2)
            gv = rows
            R.output(gv)
        return gv

    return block


def _expected_main(block_gv) -> relax.Function:
    """Phase 2's main with the pilot -> top-k -> sparse triple replaced by one block call."""
    block = block_gv

    @R.function
    def main(q: R.Tensor((1, 16, 2, 8), "float32"), k: R.Tensor((1, 16, 1, 8), "float32"),
             v: R.Tensor((1, 16, 1, 8), "float32")) -> R.Tensor((1, 16, 2, 8), "float32"):
        with R.dataflow():
            q_t = R.permute_dims(q, axes=[0, 2, 1, 3])
            k_t = R.permute_dims(k, axes=[0, 2, 1, 3])
            v_t = R.permute_dims(v, axes=[0, 2, 1, 3])
            o_t = block(q_t, k_t, v_t)
            o = R.permute_dims(o_t, axes=[0, 2, 1, 3])
            gv = o
            R.output(gv)
        return gv

    return main


def test_bucket_pilot_emits_the_expected_block_and_main():
    mod = _phase3()
    names = {gv.name_hint for gv in mod.functions}
    assert not names & {"sat_pilot_L0", "sat_pilot_qk", "sat_quantize", "sat_quantize_t", "sat_sparse_attention"}
    assert {n for n in names if n.startswith("sat_npu_L0_")} == {
        f"sat_npu_L0_f2_q8_kv{n}_c{c}" for n in (8, 16) for c in range(2)}
    kernels = _Kernels(mod)
    tvm.ir.assert_structural_equal(mod["sat_npu_block_L0"], _expected_bucketed_block(kernels))
    tvm.ir.assert_structural_equal(mod["main"], _expected_main(mod.get_global_var("sat_npu_block_L0")))


def test_pipeline_heads_launches_in_plan_order_and_waits_where_data_flows():
    before = _phase3()
    main_before, text_before = before["main"], before.script()
    after = PipelineHeads(COSTS)(before)
    assert before.script() == text_before  # the caller's module is not edited in place
    relax.analysis.well_formed(after)  # raises on the first violation
    (layer_plan,) = layer_plans(after)
    assert layer_plan.order == ("L0.b0.g0.c1", "L0.b0.g0.c0") and layer_plan.function == "sat_npu_block_L0"
    # NPU c1 0.5, then c0 1 (CPU c1 from 0.5 to 3.5), then CPU c0 to 4.5; serially 1.5 + 4
    assert (layer_plan.makespan_ms, layer_plan.serial_ms) == pytest.approx((4.5, 5.5))
    block = after["sat_npu_block_L0"]
    assert PLAN in block.attrs  # its planner time varies from run to run: checked above, not below
    tvm.ir.assert_structural_equal(block.without_attr(PLAN), _expected_pipelined_block(_Kernels(after)))
    tvm.ir.assert_structural_equal(after["main"], main_before)  # only the block function is rescheduled


@pytest.mark.parametrize("make_pass", [lambda: BucketPilot(OPTIONS, k_min=K_MIN), lambda: PipelineHeads(COSTS)],
                         ids=["BucketPilot", "PipelineHeads"])
def test_a_module_without_pilots_is_left_unchanged(make_pass):
    # phase 1 only: the block is detected, not split, so there is no pilot (and no NPU block)
    def unsplit():
        return DetectAttention()(attention_module(SPEC))

    tvm.ir.assert_structural_equal(make_pass()(unsplit()), unsplit())
