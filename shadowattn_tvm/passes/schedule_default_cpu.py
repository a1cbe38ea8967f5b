"""ScheduleDefaultCPU: give every unscheduled PrimFunc a default CPU schedule.

Runs in the lowering phase after fusion (phase 5, `passes/lowering.py`), for CPU targets only,
after ApplyTuningDatabase. Kernels that arrive scheduled (``tirx.is_scheduled``, e.g. the
shadowAttn kernels or tuned ones) are left alone. The rules (`targets/cpu_generic.py`) read the
vector width, register count and core count from the target: the one given to the constructor,
else the target in scope when the pass runs (``tvm.compile`` sets it).
"""
from __future__ import annotations

from .._compat import tirx, tvm
from ..targets.cpu_generic import schedule_default


@tvm.transform.module_pass(opt_level=0, name="ScheduleDefaultCPU")
class ScheduleDefaultCPU:
    """Apply `targets.cpu_generic.schedule_default` to each unscheduled PrimFunc."""

    def __init__(self, target: "tvm.target.Target | None" = None):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = self.target or tvm.target.Target.current(allow_none=True)
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                continue
            updates[gv] = _schedule(func, target)
        mod = mod.clone() if updates else mod  # never edit the caller's module
        for gv, func in updates.items():
            mod[gv] = func
        return mod


def _schedule(func, target):
    symbol = func.attrs["global_symbol"] if func.attrs is not None and "global_symbol" in func.attrs else None
    scheduled = schedule_default(func.with_attr("global_symbol", "main") if symbol is None else func, target)
    return scheduled.without_attr("global_symbol") if symbol is None else scheduled.with_attr("global_symbol", symbol)
