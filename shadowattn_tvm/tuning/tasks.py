"""Tuning tasks taken from a compiled model: the PrimFuncs its lowering would run.

The model goes through the shadowAttn phases 0-2, `UseTunableKernels` (hand-written sparse
kernels become their TE form) and the lowering's legalize stages (LegalizeOps, fusion). Every PrimFunc that MetaSchedule can work on
(static shapes, schedulable blocks, not already scheduled) becomes one task: the sparse
attention, the model's matmuls and the rest of its legalized ops. The hand-written pilot and
top-k kernels are not tunable (no schedulable blocks) and keep their own schedule.

Each task also carries the kernel compile ships without a database (the hand-written kernel, or
the default CPU schedule of `targets.cpu_generic`): tuning measures it as the baseline a
tuned record has to beat.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._compat import Schedule, relax, structural_hash, tirx, tvm
from ..targets.cpu_generic import schedule_default

SPARSE_TASK = "sparse_attention"  # the task of the sparse kernels' tunable form (kernel sat_sparse_attention_te)


@dataclass(frozen=True)
class TuneTask:
    name: str
    func: Any = field(compare=False)  # normalized PrimFunc (global_symbol "main"), unscheduled
    shipped: Any = field(compare=False)  # what compile uses without a database, same arguments
    index_bound: int  # integer inputs get values in [0, index_bound)
    weight: int = 1  # call sites in the model


def normalize(func: "tirx.PrimFunc") -> "tirx.PrimFunc":
    """The form a workload is recorded and looked up in (MetaSchedule's own normalisation, and
    without the fusion annotation ``op_pattern``, which says nothing about the kernel)."""
    return func.without_attr("op_pattern").with_attr("global_symbol", "main").with_attr("tirx.noalias", True)


def workload_module(func: "tirx.PrimFunc") -> tvm.IRModule:
    return tvm.IRModule({"main": normalize(func)})


def is_tunable(func) -> bool:
    """Static shapes, schedulable blocks, and not hand-written (already scheduled)."""
    if not isinstance(func, tirx.PrimFunc):
        return False
    if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
        return False
    try:
        from .._compat import meta_schedule

        args = meta_schedule().arg_info.ArgInfo.from_prim_func(func)
        if not all(isinstance(d, int) or isinstance(getattr(d, "value", None), int) for a in args for d in a.shape):
            return False
        sch = Schedule(normalize(func))
        return len(sch.get_child_blocks(sch.get_sblock("root"))) > 0
    except Exception:  # noqa: BLE001 - no root block, symbolic shapes, ...: not for MetaSchedule
        return False


def _call_counts(mod: tvm.IRModule) -> dict:
    counts: dict = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op == call_tir:
            counts[expr.args[0]] = counts.get(expr.args[0], 0) + 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def tunable_module(mod: tvm.IRModule) -> tuple[tvm.IRModule, list]:
    """(`mod` (after phase 2) with every sparse kernel in its TE form, legalized and fused as the
    lowering's schedule stage sees it (`passes.lowering.legalize_stages`), the (hand-written, TE)
    kernel pairs swapped)."""
    from ..passes.lowering import legalize_stages  # tuning sits below passes: imported when called
    from ..passes.use_tunable_kernels import swap_to_tunable

    mod, swapped = swap_to_tunable(mod)
    return tvm.transform.Sequential(legalize_stages(tvm.target.Target.current(allow_none=True)))(mod), swapped


def extract_tasks(mod: tvm.IRModule, index_bound: int) -> list[TuneTask]:
    """Tasks of a module after phase 2 (``pipeline(lower=False)``), within its target's scope."""
    lowered, swapped = tunable_module(mod)
    shipped_of = {structural_hash(normalize(te)): normalize(hand) for hand, te in swapped}
    counts = _call_counts(lowered)
    tasks: dict = {}
    for gv, func in lowered.functions.items():
        if not is_tunable(func):
            continue
        norm = normalize(func)
        key = structural_hash(norm)
        if key in tasks:
            old = tasks[key]
            tasks[key] = TuneTask(old.name, old.func, old.shipped, old.index_bound, old.weight + counts.get(gv, 1))
            continue
        shipped = shipped_of.get(key)
        name = gv.name_hint if shipped is None else SPARSE_TASK
        if shipped is None:
            shipped = schedule_default(norm)
        tasks[key] = TuneTask(name, norm, shipped, index_bound, counts.get(gv, 1))
    return sorted(tasks.values(), key=lambda t: t.name)


def model_tasks(model: str, tokens: int, keep: float, k_min: int, target) -> list[TuneTask]:
    """Tasks of a registered model (`builder.models`) compiled for `target` at `tokens`."""
    from ..builder.models import get_model
    from ..passes.pipeline import pipeline

    built = get_model(model, tokens)
    with tvm.target.Target(target):
        mod = pipeline(keep=keep, k_min=k_min, lower=False)(built.mod)
        return extract_tasks(mod, index_bound=tokens)


__all__ = ["SPARSE_TASK", "TuneTask", "extract_tasks", "model_tasks", "tunable_module", "normalize", "workload_module",
           "is_tunable"]
