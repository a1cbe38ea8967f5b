"""ApplyTuningDatabase: schedule kernels by their tuned MetaSchedule records, where those win.

Runs in the lowering phase (5) right after LegalizeOps and before `ScheduleDefaultCPU`, which
then schedules whatever is left. For each tunable PrimFunc (`schedules.tune_tasks.is_tunable`)
with a valid record in the database, the record's trace is applied if its latency beats the
measured baseline of the kernel compile would otherwise ship (`schedules.tune_database.Choice`);
otherwise the kernel is left for the default schedule. Needs a target (argument or current).
After a run, ``choices`` lists every kernel the database had a record for and what was done,
including sparse kernels that `UseTunableKernels` left hand-written because their record lost
(the pipeline adds those to ``kept`` before phase 5).
"""
from __future__ import annotations

from .._compat import tirx, tvm
from ..schedules.tune_database import Choice, TuningDatabase
from ..schedules.tune_tasks import is_tunable


@tvm.transform.module_pass(opt_level=0, name="ApplyTuningDatabase")
class ApplyTuningDatabase:
    """Replace each tunable PrimFunc whose tuned record beats the shipped kernel by the tuned one."""

    def __init__(self, database: TuningDatabase, target=None):
        self.database, self.target = database, target
        self.choices: list[Choice] = []
        self.kept: list[Choice] = []  # earlier in the pipeline: shipped kernels kept against a record
        self.untaken = 0  # earlier in the pipeline: sparse kernels left hand-written (record or not)
        self.tunable = 0  # tunable kernels seen in the last run (untaken ones included)

    def reset(self) -> None:
        self.kept, self.untaken = [], 0

    def note_untaken(self, choice: Choice | None) -> None:
        """A kernel with a tunable form kept as shipped before this pass ran (`choice`: its record)."""
        self.untaken += 1
        if choice is not None:
            self.kept.append(choice)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = self.target or tvm.target.Target.current(allow_none=True)
        if target is None:
            raise ValueError("ApplyTuningDatabase needs a target: pass one or run inside `with target:`")
        plan = _plan(mod, self.database)
        self.tunable, self.choices = plan.tunable + self.untaken, list(self.kept) + plan.choices
        for gv, choice in plan.apply.items():
            scheduled = self.database.scheduled(mod[gv], target)
            if scheduled is not None:
                mod[gv] = scheduled
        return mod


class _Plan:
    def __init__(self):
        self.tunable, self.choices, self.apply = 0, [], {}


def _plan(mod: tvm.IRModule, database: TuningDatabase) -> _Plan:
    plan = _Plan()
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or not is_tunable(func):
            continue
        plan.tunable += 1
        choice = database.choice(gv.name_hint, func)
        if choice is None:
            continue
        plan.choices.append(choice)
        if choice.use_tuned:
            plan.apply[gv] = choice
    return plan


__all__ = ["ApplyTuningDatabase"]
