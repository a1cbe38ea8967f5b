"""PipelineHeads: the launch/wait schedule in the IR, its order, idempotency, costs and numerics."""
from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax

import shadowattn_tvm as sat
from shadowattn_tvm.calibrate import SparsityProfile
from shadowattn_tvm.npu import (BucketGrid, CostSource, DeviceCostModel, GivenCosts, GridOptions, HostProfiledCosts,
                                NPUOptions, ScaleStats)
from shadowattn_tvm.npu.reference import bucket_scales
from shadowattn_tvm.passes import DetectAttention, SplitSparseAttention
from shadowattn_tvm.passes.bucket_pilot import BucketPilot
from shadowattn_tvm.passes.pipeline_heads import PipelineHeads
from shadowattn_tvm.ir_attrs import layer_plans
from shadowattn_tvm.npu_abi import NPU_LAUNCH, NPU_RUN, NPU_WAIT
from shadowattn_tvm.runtime.lanes import LaneMode, LaneOptions, NPULane
from shadowattn_tvm.npu.units import plan_units
from shadowattn_tvm.npu.planner import Launch, best_order_brute_force, makespan, plan
from shadowattn_tvm.testing import AttentionSpec, attention_module, random_inputs, sparse_reference

SPEC = AttentionSpec(q_len=64, head_dim=16, gqa="expand", mask="causal_where")
STATS = ScaleStats(q_mean=(0.02, 0.03, 0.04, 0.05), q_std=(0.004,) * 4, k_mean=(0.06, 0.08), k_std=(0.01, 0.01))
BUCKETS = (16, 32, 48, 64)
# NPU-light launches first by NPU time, then the rest by falling CPU time (Johnson's rule)
COSTS = GivenCosts(npu_ms=2.0, cpu_ms=2.0, per_key=(("L0.b0.g1.c2", 0.5, 3.0), ("L0.b0.g0.c3", 1.0, 4.0),
                                                     ("L0.b0.g0.c0", 3.0, 0.5), ("L0.b0.g1.c1", 2.0, 6.0)))


def _phase3(options, selection="head"):
    split = SplitSparseAttention(SparsityProfile.uniform(0.25), k_min=4, selection=selection)
    return BucketPilot(options, k_min=4)(split(DetectAttention()(attention_module(SPEC))))


@pytest.fixture(scope="module")
def scheduled():
    schedule = PipelineHeads(COSTS)
    mod = schedule(_phase3(NPUOptions(kv_buckets=BUCKETS, stats=STATS, costs=COSTS)))
    return schedule, mod


def _packed_name(value):
    if isinstance(value, relax.Call) and isinstance(value.args[0], relax.ExternFunc):
        return str(value.args[0].global_symbol)
    return None


def _events(func):
    """[(kind, unit key)] in binding order: launch, wait, topk, sparse (units found by dataflow)."""
    bindings = func.body.blocks[0].bindings
    unit_of, out = {}, []
    for b in bindings:
        v = b.value
        name = _packed_name(v)
        if name == NPU_LAUNCH:
            unit_of[b.var] = str(v.args[1].value)
            out.append(("launch", unit_of[b.var]))
        elif name == NPU_WAIT:
            unit_of[b.var] = unit_of[v.args[1]]
            out.append(("wait", unit_of[b.var]))
        elif isinstance(v, relax.TupleGetItem) and v.tuple_value in unit_of:
            unit_of[b.var] = unit_of[v.tuple_value]
        elif isinstance(v, relax.Call) and v.op == tvm.ir.Op.get("relax.call_tir"):
            args = v.args[1].fields
            if args[0] in unit_of:  # top-k reads the unit's scores
                unit_of[b.var] = unit_of[args[0]]
                out.append(("topk", unit_of[b.var]))
            elif len(args) > 3 and args[3] in unit_of:  # sparse attention reads its indices
                out.append(("sparse", unit_of[args[3]]))
    return out


def test_launches_first_in_plan_order_then_wait_topk_sparse_per_unit(scheduled):
    schedule, mod = scheduled
    (layer_plan,) = layer_plans(mod)
    units = [f"L0.b0.g{g}.c{c}" for g in range(2) for c in range(4)]
    by_key = {k: (n, c) for k, n, c in COSTS.per_key}
    expected = [l.key for l in plan([Launch(k, *by_key.get(k, (2.0, 2.0))) for k in units])]
    assert list(layer_plan.order) == expected
    assert expected[0] == "L0.b0.g1.c2" and expected[-1] == "L0.b0.g0.c0"
    events = _events(mod["sat_npu_block_L0"])
    launches = [u for kind, u in events if kind == "launch"]
    assert launches == expected
    first_wait = next(i for i, (kind, _) in enumerate(events) if kind == "wait")
    assert all(kind == "launch" for kind, _ in events[:first_wait]) and len(events[:first_wait]) == len(units)
    # after the launches: wait(u), top-k(u), sparse(u) for each unit in plan order, nothing interleaved
    assert events[first_wait:] == [(kind, u) for u in expected for kind in ("wait", "topk", "sparse")]
    assert not any(_packed_name(b.value) == NPU_RUN for b in mod["sat_npu_block_L0"].body.blocks[0].bindings)
    assert layer_plan.function == "sat_npu_block_L0" and layer_plan.cost_source == "given"
    assert [u.key for u in layer_plan.units] == expected


def test_schedule_is_visible_in_the_printed_ir(scheduled):
    _, mod = scheduled
    text = mod["sat_npu_block_L0"].script(show_meta=False)
    calls = []
    for line in text.splitlines():
        launch = re.search(r'"shadowattn\.npu_launch", R\.str\("([^"]+)"\)', line)
        wait = re.search(r'"shadowattn\.npu_wait", launch_(L0_b0_g\d_c\d)', line)
        kernel = re.match(r"\s*(idx|out)_(L0_b0_g\d_c\d)\b.*R\.call_tir\((sat_topk|sat_sparse_attention)", line)
        if launch:
            calls.append(("launch", launch.group(1).replace(".", "_")))
        elif wait:
            calls.append(("wait", wait.group(1)))
        elif kernel:
            calls.append(("topk" if kernel.group(1) == "idx" else "sparse", kernel.group(2)))
    keys = [k.replace(".", "_") for k in layer_plans(mod)[0].order]
    assert calls == [("launch", k) for k in keys] + [(kind, k) for k in keys for kind in ("wait", "topk", "sparse")]


def test_plan_is_optimal_for_the_cost_table(scheduled):
    (layer_plan,) = layer_plans(scheduled[1])
    by_key = {k: (n, c) for k, n, c in COSTS.per_key}
    assert [(u.npu_ms, u.cpu_ms) for u in layer_plan.units] == [by_key.get(u.key, (2.0, 2.0)) for u in layer_plan.units]
    launches = [Launch(u.key, u.npu_ms, u.cpu_ms) for u in layer_plan.units]
    assert layer_plan.makespan_ms == pytest.approx(makespan(launches))
    assert layer_plan.makespan_ms == pytest.approx(best_order_brute_force(launches))
    assert layer_plan.makespan_ms < layer_plan.serial_ms
    assert 0 < layer_plan.planner_ms < 1.0  # the paper's budget: < 1 ms per layer


def test_second_run_changes_nothing(scheduled):
    schedule, mod = scheduled
    again = PipelineHeads(COSTS)(mod)
    assert tvm_ffi.structural_equal(mod, again)


def test_cost_models_say_what_they_are():
    block = SPEC.block()
    layer_units = plan_units(block, 1, SPEC.q_len, SPEC.q_len, [0.25] * block.num_heads, 4, BUCKETS, q_chunk=256)
    model = DeviceCostModel().table(layer_units, block)
    assert model.source == CostSource.DEVICE_MODEL and "not measured" in model.label
    # the model's time grows with the chunk's keys
    assert model.costs[0].npu_ms < model.costs[3].npu_ms and model.costs[0].cpu_ms < model.costs[3].cpu_ms
    for selection in ("head", "group"):  # the CPU lane's kernels of the selection the block was split with
        profiled = HostProfiledCosts(repeat=1).table(layer_units[:2], block, selection)
        assert profiled.source == CostSource.HOST_PROFILED and "host-profiled" in profiled.label
        assert f"{selection} selection" in profiled.label
        assert all(c.npu_ms > 0 and c.cpu_ms > 0 for c in profiled.costs)


class _Recording(GivenCosts):
    """GivenCosts that records the selection each table is asked for."""

    def table(self, units, block, selection="head"):
        SEEN.append(selection)
        return super().table(units, block, selection)


SEEN: list = []


@pytest.mark.parametrize("selection", ["head", "group"])
def test_the_planner_costs_the_selection_the_block_was_split_with(selection):
    SEEN.clear()
    mod = PipelineHeads(_Recording())(_phase3(NPUOptions(kv_buckets=(32, 64), stats=STATS, costs=COSTS), selection))
    blocks = [f for _, f in mod.functions.items() if isinstance(f, relax.Function) and f.attrs is not None
              and "shadowattn.selection" in f.attrs]
    assert [str(f.attrs["shadowattn.selection"]) for f in blocks] == [selection]
    assert SEEN == [selection]


@pytest.mark.parametrize("selection", ["head", "group"])
def test_pipelined_equals_serial_and_the_numpy_reference(selection):
    inputs = random_inputs(SPEC, seed=11)
    grid = GridOptions(q_points=2, k_points=2)  # 4 cells: fewer graphs to build, same code paths
    options = NPUOptions(kv_buckets=BUCKETS, stats=STATS, costs=COSTS, grid=grid)
    ex = tvm.compile(attention_module(SPEC), target=tvm.target.Target({"kind": "llvm", "num-cores": 2}),
                     relax_pipeline=sat.pipeline(keep=0.25, k_min=4, npu=options, selection=selection))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(x) for x in inputs]
    outs = {}
    for mode in LaneMode:
        with NPULane(LaneOptions(mode=mode)):
            outs[mode] = vm["main"](*args).numpy()
    outs["no lane"] = vm["main"](*args).numpy()  # without a lane: serial on the calling thread
    assert np.array_equal(outs[LaneMode.SERIAL], outs[LaneMode.PIPELINED])
    assert np.array_equal(outs[LaneMode.SERIAL], outs["no lane"])
    q, k = (x.transpose(0, 2, 1, 3) for x in inputs[:2])
    q_scales, k_scales, _ = bucket_scales(SPEC.block(), BucketGrid.build(0, STATS, grid), q, k)
    expected, idx, _ = sparse_reference(SPEC, inputs, [0.25] * 4, 4, q_scales=q_scales, k_scales=k_scales,
                                        selection=selection)
    assert idx.shape[1] == (SPEC.kv_heads if selection == "group" else SPEC.heads)
    np.testing.assert_allclose(outs[LaneMode.PIPELINED], expected, rtol=2e-5, atol=2e-5)
