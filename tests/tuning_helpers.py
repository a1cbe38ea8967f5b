"""A tuning database for tests without a tuning run: one hand-made trace per chosen kernel.

`fake_tune_logs` commits, in MetaSchedule's JSON layout, a record whose trace runs the second
loop of the kernel's output block in parallel and tags the block with
``shadowattn.test_trace`` (so a test can see the record's schedule in the IR), plus our
``shipped_baseline.json`` saying how fast the shipped kernel was.
"""
from __future__ import annotations

from pathlib import Path

from shadowattn_tvm._compat import Schedule, meta_schedule, tvm
from shadowattn_tvm.tuning.database import TuningDatabase
from shadowattn_tvm.tuning.tasks import model_tasks, workload_module
from shadowattn_tvm.targets import get

TARGET = get("host").cpu
TAG = "shadowattn.test_trace"


def _trace(task):
    mod = workload_module(task.func)  # held here: a Schedule of a module nobody else holds edits it in place
    probe = Schedule(mod)
    name = probe.get(probe.get_child_blocks(probe.get_sblock("root"))[-1]).name_hint  # the output block
    sch = Schedule(mod)  # its trace holds only what follows
    block = sch.get_sblock(name)
    loops = sch.get_loops(block)
    sch.parallel(loops[1])  # (a Fuse in a hand-made trace does not survive MetaSchedule's JSON round trip)
    sch.annotate(block, TAG, 1)
    return sch.trace


def fake_tune_logs(work_dir, tokens: int, *, tuned_ms: float, shipped_ms: float | None,
                   names=("sparse_attention",)) -> Path:
    """Records (latency `tuned_ms`) for the default model's kernels `names`, baselines `shipped_ms`."""
    ms = meta_schedule()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(work))
    tasks = [t for t in model_tasks("default", tokens, 0.2, 16, TARGET) if t.name in names]
    assert {t.name for t in tasks} == set(names), [t.name for t in tasks]
    for task in tasks:
        mod = workload_module(task.func)
        database.commit_tuning_record(ms.database.TuningRecord(
            _trace(task), database.commit_workload(mod), [tuned_ms / 1e3], TARGET,
            ms.arg_info.ArgInfo.from_prim_func(task.func)))
    if shipped_ms is not None:
        checked = TuningDatabase(work)
        for task in tasks:
            checked.save_baseline(task.func, task.name, shipped_ms, "test")
    return work
