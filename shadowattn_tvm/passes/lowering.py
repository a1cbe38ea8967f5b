"""Phase 5: one lowering per target, built from TVM's own backend stages.

The lane of the target (`targets.lanes`) says how. On a CPU lane (host, ARM) the stages are ``tvm.relax.backend.cpu_generic``'s, in its order, with ours
between them:

  library dispatch   DispatchSampling, DispatchSortScan                            (TVM)
  legalize           KeepKernelsWhole, LegalizeOps, AnnotateTIROpPattern, FoldConstant,
                     FuseOps, FuseTIR                                              (TVM + ours)
  schedule           ApplyTuningDatabase (records that win), ScheduleDefaultCPU    (ours)
  dataflow lower     RewriteDataflowReshape ... CallTIRRewrite                     (TVM)
  finalize           StaticPlanBlockMemory ... AttachGlobalSymbol                  (TVM)

`KeepKernelsWhole` marks the shadowAttn kernels (``sat_*``: hand-scheduled, or the sparse
kernel's tunable TE form, which a tuning record must match as it is) and every PrimFunc already
scheduled (``tirx.is_scheduled``) opaque, so FuseOps fuses only the model's own operators around
them and each kernel is scheduled in exactly one place: ours by their own schedule or record, the
fused rest by a tuning record or the default CPU rule. The Adreno lane gets TVM's default
pipeline for its target; the Hexagon lane is no Relax target (its graphs are built by
`targets.hexagon`).
"""
from __future__ import annotations

from pathlib import Path

from .._compat import relax, tirx, tvm
from ..tuning.database import TuningDatabase, open_database
from ..targets.lanes import lane_for
from .apply_tuning_database import ApplyTuningDatabase
from .schedule_default_cpu import ScheduleDefaultCPU

OPAQUE = 8  # relax.OpPatternKind.kOpaque: FuseOps never fuses such a call with another
KERNEL_PREFIX = "sat_"  # the names our passes give the kernels they add


def _whole(gv, func) -> bool:
    attrs = func.attrs
    if attrs is not None and "op_pattern" in attrs:
        return False  # already classified
    return gv.name_hint.startswith(KERNEL_PREFIX) or (attrs is not None and "tirx.is_scheduled" in attrs)


@tvm.transform.module_pass(opt_level=0, name="KeepKernelsWhole")
def keep_kernels_whole(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Mark our kernels and every scheduled PrimFunc opaque (``op_pattern``) before fusion."""
    mod = mod.clone()  # never edit the caller's module
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc) and _whole(gv, func):
            mod[gv] = func.with_attr("op_pattern", OPAQUE)
    return mod


def _cpu_backend():
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic  # TVM's CPU stage functions (not all re-exported)

    return cpu_generic


def legalize_stages(target) -> list:
    """TVM's CPU legalization stages (fusion included) with our kernels kept whole: what the
    schedule stage, and therefore tuning (`tuning.tasks`), sees."""
    return [keep_kernels_whole, *_cpu_backend().legalize_passes(target)]


def cpu_stages(target, tuning: ApplyTuningDatabase | None = None) -> list:
    """The CPU lowering of `target` as a pass list (see the module docstring)."""
    backend = _cpu_backend()
    return [*backend.library_dispatch_passes(target), *legalize_stages(target),
            *([tuning] if tuning is not None else []), ScheduleDefaultCPU(),
            *backend.dataflow_lower_passes(target), *backend.finalize_passes(target)]


def lowering(target=None, database: TuningDatabase | str | Path | None = None) -> tvm.transform.Pass:
    """Phase 5 for `target` (default: the current target; `tvm.compile` sets it).

    Usable alone for a scheduled dense build: ``tvm.compile(mod, relax_pipeline=sat.lowering())``.
    database: tuning logs (`TuningDatabase` or its directory) applied before the default schedules
    on CPUs; what they scheduled is in the lowered module (`ir_attrs.tuning_choices`).
    """
    if database is not None and not isinstance(database, TuningDatabase):
        database = open_database(database)
    tuning = None if database is None else ApplyTuningDatabase(database, target)

    @tvm.transform.module_pass(opt_level=0, name="ShadowAttnLowering")
    def _lower(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        tgt = target or tvm.target.Target.current(allow_none=True)
        lane = lane_for(tgt)
        if lane.lowering == "cpu_stages":
            return tvm.transform.Sequential(cpu_stages(tgt, tuning))(mod)
        if lane.lowering == "tvm":
            return relax.get_default_pipeline(tgt)(mod)
        raise ValueError(f"the {lane.name} lane is not a Relax target: its code is built by the build's "
                         f"{'/'.join(lane.artifacts)} writer; compile the model for the device's CPU target")

    return _lower


__all__ = ["KERNEL_PREFIX", "OPAQUE", "cpu_stages", "keep_kernels_whole", "legalize_stages", "lowering"]
