"""ScheduleDefaultCPU: give every unscheduled PrimFunc a default CPU schedule.

Runs in the lowering phase right after LegalizeOps (phase 5), for CPU targets only. Kernels
that arrive scheduled (``tirx.is_scheduled``, e.g. the shadowAttn kernels or tuned ones) are
left alone. See `targets/cpu_generic.py` for the rules.
"""
from __future__ import annotations

from .._compat import tirx, tvm
from ..targets.cpu_generic import schedule_default


@tvm.transform.module_pass(opt_level=0, name="ScheduleDefaultCPU")
class ScheduleDefaultCPU:
    """Apply `targets.cpu_generic.schedule_default` to each unscheduled PrimFunc."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                continue
            updates[gv] = _schedule(func)
        mod = mod.clone() if updates else mod  # never edit the caller's module
        for gv, func in updates.items():
            mod[gv] = func
        return mod


def _schedule(func):
    symbol = func.attrs["global_symbol"] if func.attrs is not None and "global_symbol" in func.attrs else None
    scheduled = schedule_default(func.with_attr("global_symbol", "main") if symbol is None else func)
    return scheduled.without_attr("global_symbol") if symbol is None else scheduled.with_attr("global_symbol", symbol)
