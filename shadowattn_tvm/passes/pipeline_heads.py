"""PipelineHeads: the NPU launches of each block become asynchronous, in the planner's order.

Phase 4 of the shadowAttn pipeline; runs after `BucketPilot` (phase 3). Precondition: NPU block
functions (``shadowattn.kind == "npu_block"``) whose launches are ``shadowattn.npu_run`` calls.

Each launch unit's NPU time (stage + bucket graph) and CPU time (top-k + sparse attention) come
from a cost model (`npu.costs`: profiled on the host for host runs, a labelled device model for
phones), for the block's selection (``shadowattn.selection``, set by `BucketPilot`: a top-k per
head, or one per KV group with the group kernels); the greedy planner (`npu.planner.plan`,
Johnson's rule, the paper's Algorithm 1) orders the units. The block is then rescheduled as

    what the launches read (the heads' actual scales)
    npu_launch(unit) for every unit, in plan order        -> handles; the NPU lane starts
    for each unit in plan order:
        the unit's CPU work that needs no NPU result (head/row slices)
        npu_wait(handle)                                  -> scores, cell scales
        top-k, sparse attention of the unit
    assembly of the output

so the CPU lane waits only where data flows, while the NPU lane works through the queue. The
schedule is the order of bindings in the block function (visible in the printed IR); the
function gets the ``shadowattn.plan`` attribute (`ir_attrs.LayerPlan`: launch order, predicted
lane times, where the costs came from). A second run finds no ``npu_run`` left and changes nothing.
"""
from __future__ import annotations

import time

from .._compat import relax, tvm
from ..block import AttentionBlock
from ..ir_attrs import PLAN, LayerPlan, UnitPlan, plan_attr
from ..npu.costs import HostProfiledCosts
from ..npu.units import LaunchUnit
from ..npu_abi import NPU_LAUNCH, NPU_RUN, NPU_WAIT
from ..npu.planner import Launch, makespan, plan, serial_time
from .bucket_pilot import NPU_BLOCK_KIND

_PLAN_REPEAT = 5  # planning is microseconds: report the best of a few runs


@tvm.transform.module_pass(opt_level=0, name="PipelineHeads")
class PipelineHeads:
    """Issue every NPU launch of a block up front, in planner order; wait where data flows."""

    def __init__(self, costs=None):
        self.costs = costs if costs is not None else HostProfiledCosts()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, relax.Function) or func.attrs is None or "shadowattn.kind" not in func.attrs:
                continue
            if str(func.attrs["shadowattn.kind"]) != NPU_BLOCK_KIND:
                continue
            analysis = _Analysis(func)
            if not analysis.runs:
                continue
            selection = str(func.attrs["shadowattn.selection"]) if "shadowattn.selection" in func.attrs else "head"
            layer_plan = self._plan(gv.name_hint, AttentionBlock.from_attrs(func.attrs), analysis.units(), selection)
            updates[gv] = _reschedule(func, analysis, layer_plan)
        mod = mod.clone() if updates else mod  # never edit the caller's module
        for gv, func in updates.items():
            mod[gv] = func
        # the rebuilt functions carry no struct info on their new SeqExpr: normalise (well-formed IR)
        return relax.transform.Normalize()(mod) if updates else mod

    def _plan(self, function: str, block: AttentionBlock, units, selection: str) -> LayerPlan:
        table = self.costs.table(units, block, selection)
        by_key = table.by_key()
        best, order = float("inf"), None
        for _ in range(_PLAN_REPEAT):
            start = time.perf_counter()
            launches = [Launch(u.key, by_key[u.key].npu_ms, by_key[u.key].cpu_ms) for u in units]
            order = plan(launches)
            best = min(best, time.perf_counter() - start)
        return LayerPlan(block.layer, function, tuple(l.key for l in order),
                         tuple(UnitPlan(l.key, l.npu_ms, l.cpu_ms) for l in order), makespan(order), serial_time(order),
                         best * 1e3, table.source.value, table.label)


def _is_run(value) -> bool:
    return (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_pure_packed")
            and isinstance(value.args[0], relax.ExternFunc) and str(value.args[0].global_symbol) == NPU_RUN)


class _Analysis:
    """Bindings of the block's dataflow block, its run calls and which run each binding needs."""

    def __init__(self, func: relax.Function):
        body = func.body
        if len(body.blocks) != 1 or not isinstance(body.blocks[0], relax.DataflowBlock):
            raise ValueError("an NPU block function must hold one dataflow block (as BucketPilot emits)")
        self.bindings = list(body.blocks[0].bindings)
        index = {b.var: i for i, b in enumerate(self.bindings)}
        self.uses = [[index[v] for v in relax.analysis.free_vars(b.value) if v in index] for b in self.bindings]
        self.runs = {}  # binding index -> unit key
        self.run_deps = []
        for i, b in enumerate(self.bindings):
            deps = set().union(*(self.run_deps[j] for j in self.uses[i])) if self.uses[i] else set()
            if _is_run(b.value):
                self.runs[i] = str(b.value.args[1].value)
                deps = {i}
            self.run_deps.append(deps)

    def units(self) -> list:
        return [LaunchUnit.from_geometry(self.bindings[i].value.args[2].values) for i in sorted(self.runs)]

    def ancestors(self, targets, emitted) -> list:
        """Bindings not yet emitted that `targets` need and that need no NPU result."""
        need, stack = set(), list(targets)
        while stack:
            j = stack.pop()
            if j in emitted or j in need or self.run_deps[j]:
                continue
            need.add(j)
            stack.extend(self.uses[j])
        return sorted(need)


def _reschedule(func: relax.Function, a: _Analysis, layer_plan: LayerPlan) -> relax.Function:
    bb = relax.BlockBuilder()
    run_of = {key: i for i, key in a.runs.items()}
    emitted, out = set(), []

    def emit(indices):
        for j in indices:
            out.append(a.bindings[j])
            emitted.add(j)

    # 1. what the launches read (actual scales); 2. every launch, in plan order
    emit(a.ancestors([j for i in a.runs for j in a.uses[i]], emitted))
    handles = {}
    for key in layer_plan.order:
        run = a.bindings[run_of[key]].value
        launch = bb.normalize(relax.op.call_pure_packed(NPU_LAUNCH, *run.args[1:], ty_args=[tvm.ir.PrimType("int64")]))
        handles[key] = relax.DataflowVar(f"launch_{key.replace('.', '_')}", launch.ty)
        out.append(relax.VarBinding(handles[key], launch))
    # 3. per unit: its run-free CPU work, the wait, then its top-k and sparse attention
    for key in layer_plan.order:
        i = run_of[key]
        post = [j for j in range(len(a.bindings)) if j != i and a.run_deps[j] == {i}]
        emit(a.ancestors([u for j in post for u in a.uses[j]], emitted))
        run = a.bindings[i]
        tensors = [x for x in run.value.args[3:] if isinstance(x.ty, relax.TensorType)]
        wait = bb.normalize(relax.op.call_pure_packed(NPU_WAIT, handles[key], *tensors, ty_args=[run.var.ty]))
        out.append(relax.VarBinding(run.var, wait))
        emitted.add(i)
        emit(post)
    # 4. the rest (output assembly), in the original order
    emit([j for j in range(len(a.bindings)) if j not in emitted])
    body = relax.SeqExpr([relax.DataflowBlock(out)], func.body.body)
    new = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    return new.with_attr(PLAN, plan_attr(layer_plan))


__all__ = ["PipelineHeads"]
