"""MetaSchedule tuning of a model's kernels into ``tune_logs/<device>/`` (MetaSchedule's layout).

    result = tune("host", trials=64)                                   # measured on this machine
    result = tune("snapdragon-8gen3", trials=64, endpoint=Endpoint("127.0.0.1", 9190, "snapdragon-8gen3"))

Tasks come from the compiled model (`tune_tasks.model_tasks`): the sparse attention in its
tunable TE form, the model's matmuls and its other legalized ops. XGBoost cost model,
evolutionary search, MetaSchedule's gradient task scheduler spreading the trials over the tasks.
Records land in ``database_workload.json`` and ``database_tuning_record.json`` as they are
measured, so an interrupted run loses nothing and a re-run continues from them. Workarounds for
TVM 0.27 (see TVM_0_27.md): our own ``f_build`` (the default imports every tensor intrinsic,
~30 s per worker) and an ``f_alloc_argument`` that gives integer inputs valid row indices
(random int32 would make the gather read out of bounds).

Before the trials, each task's shipped kernel (the hand-written one, or the default CPU schedule)
is measured once by the same builder and runner into ``shipped_baseline.json``
(`tune_database.BASELINE_FILE`): compile applies a tuned record only where it beats that baseline.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from .._compat import import_tensor_intrinsics, meta_schedule, tvm
from ..runtime.rpc_session import RPCUnavailable, check_available, looks_lost
from ..targets import DeviceProfile
from ..targets import get as get_device
from .database import TuningDatabase, workload_key
from .tasks import SPARSE_TASK, TuneTask, model_tasks


@dataclass(frozen=True)
class TuneResult:
    work_dir: Path
    records: int  # tuning records in the database (all runs so far)
    best_ms: dict  # task name -> best measured latency in ms (None: nothing valid yet)
    shipped_ms: dict  # task name -> measured latency of the kernel compile ships without the database
    seconds: float


def _arrays(args_info, index_bound: int, repeat: int):
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(repeat):
        arrays = []
        for info in args_info:  # JSON form: ["TENSOR", dtype, shape]
            _, dtype, shape = info if isinstance(info, (list, tuple)) else ("TENSOR", info.dtype, info.shape)
            shape, dtype = [int(d) for d in shape], str(dtype)
            if dtype.startswith(("int", "uint")):
                arrays.append(rng.integers(0, index_bound, size=shape).astype(dtype))
            else:
                arrays.append(rng.standard_normal(shape).astype(dtype))
        yield arrays


def _local_alloc(index_bound: int):
    def alloc(device, args_info, alloc_repeat):  # runs in MetaSchedule's worker: keep it self-contained
        import tvm as _tvm

        return [[_tvm.runtime.tensor(a, device) for a in arrays] for arrays in _arrays(args_info, index_bound,
                                                                                        alloc_repeat)]

    return alloc


def _rpc_alloc(index_bound: int):
    def alloc(session, device, args_info, alloc_repeat):
        import tvm as _tvm

        return [[_tvm.runtime.tensor(a, device) for a in arrays] for arrays in _arrays(args_info, index_bound,
                                                                                        alloc_repeat)]

    return alloc


def _build(mod, target, _params):
    import tvm as _tvm

    return _tvm.compile(mod, target=target).mod  # the runtime module: an Executable would not export


def _exporter(cross_compiler: str | None):
    def export(rt_mod):
        import os
        import tempfile

        import tvm as _tvm

        path = os.path.join(tempfile.mkdtemp(), "tuned.so")
        fcompile = None if cross_compiler is None else _tvm.support.cc.cross_compiler(cross_compiler)
        rt_mod.export_library(path, fcompile=fcompile)
        return path

    return export


def _progress_callback(total: int, log):
    ms = meta_schedule()

    @tvm.ir.utils.derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        """tqdm bar over trials with the best latency so far (a plain line per batch without tqdm)."""

        def __init__(self):
            super().__init__()
            self.best, self.done, self.bar = math.inf, 0, None
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="trial", desc="tuning")
            except ImportError:
                pass

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for result in runner_results:
                if result.run_secs:
                    self.best = min(self.best, 1e3 * sum(float(s) for s in result.run_secs) / len(result.run_secs))
            self.done += len(runner_results)
            best = f"{self.best:.3f} ms" if math.isfinite(self.best) else "-"
            if self.bar is not None:
                self.bar.update(len(runner_results))
                self.bar.set_postfix(best=best)
            else:
                log(f"[tune] {self.done}/{total} trials, best {best}")

    return _Progress()


def _session(endpoint, timeout: float):
    def create(_rpc_config):  # runs in MetaSchedule's worker, once per trial
        from shadowattn_tvm.runtime.rpc_session import open_session

        # bounded: TVM's own request waits forever for a server that died (the tracker keeps the request)
        return open_session(endpoint, wait=timeout, session_timeout=timeout)

    return create


class _Watch:
    """Notices the endpoint going away: a failed trial whose error looks like a lost connection is
    followed by a fail-fast check of the endpoint, whose RPCUnavailable ends the run."""

    def __init__(self, endpoint):
        self.endpoint, self.lost = endpoint, None

    def check(self, runner_results) -> None:
        if self.endpoint is None or self.lost is not None:
            return
        if not any(looks_lost(r.error_msg) for r in runner_results if r.error_msg):
            return
        try:
            check_available(self.endpoint, fix="")  # the message ends "re-run the same command to resume"
        except RPCUnavailable as err:
            self.lost = str(err)
            raise


def _watch_callback(watch: _Watch):
    ms = meta_schedule()

    @tvm.ir.utils.derived_object
    class _StopWhenLost(ms.measure_callback.PyMeasureCallback):
        """Runs before AddToDatabase: when the endpoint is gone it commits the batch's measured
        records itself and stops, so trials that failed only because the device went away are not
        recorded as failures (a resumed run measures them again)."""

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            try:
                watch.check(runner_results)
            except RPCUnavailable:
                ctx, database = task_scheduler.tasks_[task_id].ctx, task_scheduler.database_
                workload = database.commit_workload(ctx.mod)
                for candidate, result in zip(measure_candidates, runner_results):
                    if result.run_secs and not result.error_msg:
                        database.commit_tuning_record(ms.database.TuningRecord(
                            candidate.sch.trace, workload, result.run_secs, ctx.target, candidate.args_info))
                raise

    return _StopWhenLost()


def _runner(endpoint, index_bound: int, timeout: float):
    ms = meta_schedule()
    evaluator = ms.runner.EvaluatorConfig(number=2, repeat=1, min_repeat_ms=0, enable_cpu_cache_flush=False)
    if endpoint is None:
        return ms.runner.LocalRunner(timeout_sec=timeout, evaluator_config=evaluator,
                                     f_alloc_argument=_local_alloc(index_bound))
    config = ms.runner.RPCConfig(tracker_host=endpoint.host, tracker_port=endpoint.port, tracker_key=endpoint.key,
                                 session_timeout_sec=timeout)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1,
                               f_create_session=_session(endpoint, timeout), f_alloc_argument=_rpc_alloc(index_bound))


def _space():
    """TVM's CPU rules, except that multi-level tiling never moves a consumer into the tiles
    (reuse_write): on the sparse kernel the `out` block also reads `denom`, and the default rule
    raises a ScheduleError (reverse-compute-at) that aborts the whole tuning run."""
    ms = meta_schedule()
    rule = ms.schedule_rule
    rules = [
        rule.ApplyCustomRule(), rule.InlineConstantScalars(),
        rule.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True, disallow_if_then_else=True,
                        require_injective=True, require_ordered=True, disallow_op=["tirx.exp"]),
        rule.AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
        rule.MultiLevelTiling(structure="SSRSRS", tile_binds=None, max_innermost_factor=64, vector_load_lens=None,
                              reuse_read=None, reuse_write=None),
        rule.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64,
                                        unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True),
        rule.RandomComputeLocation(),
    ]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs="llvm", mutator_probs="llvm")


def default_work_dir(device: DeviceProfile) -> Path:
    return Path("tune_logs") / device.name


def _select(all_tasks: list[TuneTask], names) -> list[TuneTask]:
    if names is None:
        return all_tasks
    known = {t.name for t in all_tasks}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown tuning tasks {unknown}; known: {sorted(known)}")
    return [t for t in all_tasks if t.name in set(names)]


def _measure_shipped(database: TuningDatabase, tasks, device, builder, runner, watch: _Watch, log) -> dict:
    """Latency of each task's shipped kernel through the tuning builder and runner (once per workload)."""
    ms = meta_schedule()
    shipped = {}
    for task in tasks:
        known = database.baselines.get(workload_key(task.func))
        if known is not None:
            shipped[task.name] = float(known["shipped_ms"])
            continue
        built = builder.build([ms.builder.BuilderInput(tvm.IRModule({"main": task.shipped}), device.cpu)])[0]
        if built.error_msg:
            log(f"[tune] {task.name}: shipped kernel did not build ({built.error_msg.splitlines()[0]})")
            continue
        args = ms.arg_info.ArgInfo.from_prim_func(task.func)  # static shapes; the shipped kernel's may be symbolic
        best = math.inf
        for _ in range(3):  # the best of three runs, as the records are the best of many candidates
            result = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args)])[0].result()
            watch.check([result])
            if result.run_secs:
                best = min(best, 1e3 * sum(float(s) for s in result.run_secs) / len(result.run_secs))
        if math.isfinite(best):
            kernel = "hand-written" if task.shipped.attrs is not None and "tirx.is_scheduled" in task.shipped.attrs \
                and task.name == SPARSE_TASK else "default schedule"
            database.save_baseline(task.func, task.name, best, kernel)
            shipped[task.name] = best
    return shipped


def _search(selected: list[TuneTask], device: DeviceProfile, trials: int, trials_per_iter: int, work: Path,
            builder, runner, watch: _Watch, log) -> None:
    ms = meta_schedule()
    import_tensor_intrinsics()  # TuneContext imports them: 75 s -> 8 s
    cores = max(1, int(device.cpu.attrs.get("num-cores", 1)) if not device.is_cross else 1)
    contexts = [
        ms.TuneContext(mod=tvm.IRModule({"main": task.func}), target=device.cpu, space_generator=_space(),
                       search_strategy=ms.search_strategy.EvolutionarySearch(
                           population_size=max(64, 4 * trials_per_iter), init_min_unmeasured=16, genetic_num_iters=2),
                       task_name=task.name, rand_state=seed, num_threads=cores).clone()
        for seed, task in enumerate(selected)
    ]
    ms.tune_tasks(
        tasks=contexts, task_weights=[float(t.weight) for t in selected], work_dir=str(work),
        max_trials_global=trials, num_trials_per_iter=min(trials_per_iter, trials),
        builder=builder, runner=runner, database=ms.database.JSONDatabase(work_dir=str(work)),
        measure_callbacks=[_watch_callback(watch), *ms.measure_callback.MeasureCallback.create("default"),
                           _progress_callback(trials, log)],
        task_scheduler="gradient",
    )


def tune(device: str | DeviceProfile, *, model: str = "default", tasks=None, trials: int = 64, tokens: int = 1024,
         keep: float = 0.2, k_min: int = 16, work_dir: str | Path | None = None, endpoint=None,
         trials_per_iter: int = 16, timeout: float = 120.0, log=print) -> TuneResult:
    """Tune the kernels of `model` (or only `tasks`, by name) for `device`, `trials` in all.

    `endpoint` (a tracker `rpc_session.Endpoint`) measures on a device instead of this machine.
    """
    ms = meta_schedule()
    device = get_device(device)
    if device.is_cross and endpoint is None:
        raise ValueError(f"{device.name} code cannot run here: give an RPC tracker endpoint to measure on")
    selected = _select(model_tasks(model, tokens, keep, k_min, device.cpu), tasks)
    work = Path(work_dir) if work_dir is not None else default_work_dir(device)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("database_workload.json", "database_tuning_record.json"):
        (work / name).touch()
    start = time.perf_counter()
    log(f"[tune] {model} for {device.name}: {len(selected)} kernels ({', '.join(t.name for t in selected)}), "
        f"{trials} trials, measured {'on ' + endpoint.describe() if endpoint else 'on this machine'}; records in {work}")
    index_bound = min(t.index_bound for t in selected)
    watch = _Watch(endpoint)
    # the builder's and runner's worker processes import TVM, not torch (3 s less per worker)
    with settings.torchless_subprocesses():
        builder = ms.builder.LocalBuilder(f_build=_build, f_export=_exporter(device.cross_compiler), max_workers=1,
                                          timeout_sec=timeout)
        runner = _runner(endpoint, index_bound, timeout)
        try:  # baselines first: an interrupted run then still tells compile what a record has to beat
            shipped = _measure_shipped(TuningDatabase(work), selected, device, builder, runner, watch, log)
            _search(selected, device, trials, trials_per_iter, work, builder, runner, watch, log)
        except Exception as err:  # noqa: BLE001 - MetaSchedule re-raises the callback's error as its own type
            if watch.lost is None:
                raise
            raise RPCUnavailable(f"tuning stopped: {watch.lost}; the {len(TuningDatabase(work))} records measured "
                                 f"so far are kept in {work}: re-run the same command to resume") from err
    database = TuningDatabase(work)
    return TuneResult(work_dir=work, records=len(database), best_ms={t.name: database.best_ms(t.func) for t in selected},
                      shipped_ms=shipped, seconds=time.perf_counter() - start)


def compare_on_host(work_dir: str | Path, *, model: str = "default", tokens: int = 1024, keep: float = 0.2,
                    k_min: int = 16, repeat: int = 5) -> list[dict]:
    """Shipped vs tuned latency of each recorded kernel, measured now side by side on this machine."""
    device = get_device("host")
    database = TuningDatabase(work_dir)
    rows = []
    for task in model_tasks(model, tokens, keep, k_min, device.cpu):
        tuned = database.scheduled(task.func, device.cpu)
        if tuned is None:
            continue
        shipped_ms = _time_ms(task.shipped, task.func, device.cpu, task.index_bound, repeat)
        tuned_ms = _time_ms(tuned, task.func, device.cpu, task.index_bound, repeat)
        rows.append({"task": task.name, "shipped_ms": shipped_ms, "tuned_ms": tuned_ms,
                     "speedup": shipped_ms / tuned_ms})
    return rows


def _time_ms(func, like, target, index_bound: int, repeat: int) -> float:
    """Best-of-`repeat` latency of `func` called with arrays shaped like `like`'s (static) arguments."""
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target).mod
    infos = meta_schedule().arg_info.ArgInfo.from_prim_func(like)
    args = [tvm.runtime.tensor(a) for a in next(_arrays(infos, index_bound, 1))]
    return float(1e3 * lib.time_evaluator("main", tvm.cpu(), number=3, repeat=repeat)(*args).min)
