"""ApplyTuningDatabase: schedule kernels by their tuned MetaSchedule records, where those win.

Runs in the lowering phase (5) after the legalize stages (LegalizeOps, fusion) and before
`ScheduleDefaultCPU`, which then schedules whatever is left. For each tunable PrimFunc
(`tuning.tasks.is_tunable`) with a valid record in the database, the record's trace is
applied if its latency beats the measured baseline of the kernel compile would otherwise ship
(`ir_attrs.Choice`); otherwise the kernel is left for the default schedule. Needs a target
(argument or current). What it did is left in the module as ``ir_attrs.TUNING``
(`ir_attrs.tuning_choices`), after what `UseTunableKernels` recorded there: the sparse kernels
it kept hand-written because their record lost.
"""
from __future__ import annotations

from .._compat import tirx, tvm
from ..ir_attrs import TuningChoices, tuning_choices, with_tuning
from ..tuning.database import TuningDatabase
from ..tuning.tasks import is_tunable


@tvm.transform.module_pass(opt_level=0, name="ApplyTuningDatabase")
class ApplyTuningDatabase:
    """Replace each tunable PrimFunc whose tuned record beats the shipped kernel by the tuned one."""

    def __init__(self, database: TuningDatabase, target=None):
        self.database, self.target = database, target

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = self.target or tvm.target.Target.current(allow_none=True)
        if target is None:
            raise ValueError("ApplyTuningDatabase needs a target: pass one or run inside `with target:`")
        choices, tunable = [], 0
        mod = mod.clone()  # never edit the caller's module
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tirx.PrimFunc) or not is_tunable(func):
                continue
            tunable += 1
            choice = self.database.choice(gv.name_hint, func)
            if choice is None:
                continue
            choices.append(choice)
            scheduled = self.database.scheduled(func, target) if choice.use_tuned else None
            if scheduled is not None:
                mod[gv] = scheduled
        return with_tuning(mod, (tuning_choices(mod) or TuningChoices()) + TuningChoices(tuple(choices), tunable))


__all__ = ["ApplyTuningDatabase"]
