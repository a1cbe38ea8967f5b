"""MetaSchedule tuning of the shadowAttn kernels into ``tune_logs/<device>/`` (MetaSchedule's layout).

    result = tune("host", trials=64)                                   # measured on this machine
    result = tune("snapdragon-8gen3", trials=64, endpoint=Endpoint("127.0.0.1", 9190, "snapdragon-8gen3"))

XGBoost cost model, evolutionary search. Records land in ``database_workload.json`` and
``database_tuning_record.json`` as they are measured, so an interrupted run loses nothing and a
re-run continues from them. Workarounds for TVM 0.27 (see TVM_0_27.md): our own ``f_build`` (the
default imports every tensor intrinsic, ~30 s per worker) and an ``f_alloc_argument`` that gives
integer inputs valid row indices (random int32 would make the gather read out of bounds).

Tuned kernel: the generic TE definition of the sparse attention (`ops.sparse_attention`); the
hand-written static-shape kernel the pipeline ships is already scheduled and has nothing to tune.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .._compat import meta_schedule, tvm
from ..block import max_keep_count
from ..targets import DeviceProfile
from ..targets import get as get_device


@dataclass(frozen=True)
class TuneTask:
    name: str
    func: Any = field(compare=False)  # PrimFunc, unscheduled
    index_bound: int  # integer inputs get values in [0, index_bound)


def _sparse_attention_task(tokens: int, keep: float, k_min: int) -> TuneTask:
    from ..builder.models import get_model
    from ..ops.sparse_attention import _sparse_attention_te  # see the report: wants a public name
    from ..testing import AttentionSpec

    spec = AttentionSpec(**get_model("default", tokens).config)
    block = spec.block()
    top_k = max_keep_count(keep, tokens, k_min)
    func = _sparse_attention_te(block, (spec.batch, spec.heads, tokens, spec.head_dim), tokens, spec.head_dim, top_k)
    return TuneTask("sparse_attention", func.with_attr("global_symbol", "main"), index_bound=tokens)


TASKS: dict[str, Callable[[int, float, int], TuneTask]] = {"sparse_attention": _sparse_attention_task}


@dataclass(frozen=True)
class TuneResult:
    work_dir: Path
    records: int  # tuning records in the database (all runs so far)
    best_ms: dict  # task name -> best measured latency in ms (None: nothing valid yet)
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


def _runner(endpoint, index_bound: int, timeout: float):
    ms = meta_schedule()
    evaluator = ms.runner.EvaluatorConfig(number=2, repeat=1, min_repeat_ms=0, enable_cpu_cache_flush=False)
    if endpoint is None:
        return ms.runner.LocalRunner(timeout_sec=timeout, evaluator_config=evaluator,
                                     f_alloc_argument=_local_alloc(index_bound))
    config = ms.runner.RPCConfig(tracker_host=endpoint.host, tracker_port=endpoint.port, tracker_key=endpoint.key,
                                 session_timeout_sec=timeout)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1,
                               f_alloc_argument=_rpc_alloc(index_bound))


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


def tune(device: str | DeviceProfile, *, tasks=("sparse_attention",), trials: int = 64, tokens: int = 1024,
         keep: float = 0.2, k_min: int = 16, work_dir: str | Path | None = None, endpoint=None,
         trials_per_iter: int = 16, timeout: float = 120.0, log=print) -> TuneResult:
    """Tune `tasks` for `device`; `endpoint` (a tracker `rpc_session.Endpoint`) measures on a device."""
    ms = meta_schedule()
    device = get_device(device)
    if device.is_cross and endpoint is None:
        raise ValueError(f"{device.name} code cannot run here: give an RPC tracker endpoint to measure on")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tuning tasks {unknown}; known: {sorted(TASKS)}")
    work = Path(work_dir) if work_dir is not None else default_work_dir(device)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    best = {}
    for name in tasks:
        task = TASKS[name](tokens, keep, k_min)
        log(f"[tune] {name} for {device.name}: {trials} trials, measured "
            f"{'on ' + endpoint.describe() if endpoint else 'on this machine'}; records in {work}")
        ms.tune_tir(
            task.func, device.cpu, str(work), max_trials_global=trials,
            num_trials_per_iter=min(trials_per_iter, trials),
            builder=ms.builder.LocalBuilder(f_build=_build, f_export=_exporter(device.cross_compiler), max_workers=1,
                                            timeout_sec=timeout),
            runner=_runner(endpoint, task.index_bound, timeout),
            database=ms.database.JSONDatabase(work_dir=str(work)), space=_space(),
            measure_callbacks=ms.measure_callback.MeasureCallback.create("default") + [_progress_callback(trials, log)],
            strategy=ms.search_strategy.EvolutionarySearch(population_size=max(64, 4 * trials),
                                                           init_min_unmeasured=16, genetic_num_iters=2),
            num_tuning_cores=max(1, int(device.cpu.attrs.get("num-cores", 1)) if not device.is_cross else 1),
            seed=0,
        )
        best[name] = best_latency_ms(work, task, device)
    database = ms.database.JSONDatabase(work_dir=str(work))
    return TuneResult(work_dir=work, records=len(database), best_ms=best, seconds=time.perf_counter() - start)


def best_latency_ms(work_dir: str | Path, task: TuneTask, device: DeviceProfile) -> float | None:
    """Best recorded mean latency of `task` in the database, or None."""
    ms = meta_schedule()
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    mod = tvm.IRModule({"main": task.func})
    if not database.has_workload(mod):
        return None
    records = database.get_top_k(database.commit_workload(mod), 1)
    valid = [r for r in records if r.run_secs and all(float(s) < 1e9 for s in r.run_secs)]
    if not valid:
        return None
    return 1e3 * sum(float(s) for s in valid[0].run_secs) / len(valid[0].run_secs)


def apply_best(work_dir: str | Path, task: TuneTask, device: DeviceProfile):
    """The task's PrimFunc scheduled by the best record (None if the database has none)."""
    ms = meta_schedule()
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    sch = ms.tir_integration.compile_tir(database, task.func, device.cpu)
    return None if sch is None else sch.mod["main"]


def _time_ms(func, target, index_bound: int, repeat: int = 5) -> float:
    lib = tvm.compile(func, target=target).mod
    args = [tvm.runtime.tensor(a) for a in next(_arrays(meta_schedule().arg_info.ArgInfo.from_prim_func(func),
                                                         index_bound, 1))]
    return float(1e3 * lib.time_evaluator("main", tvm.cpu(), number=3, repeat=repeat)(*args).min)


def compare_on_host(work_dir: str | Path, *, tokens: int = 1024, keep: float = 0.2, k_min: int = 16,
                    task: str = "sparse_attention") -> dict:
    """Untuned vs tuned latency of `task` measured now, side by side, on this machine (host records)."""
    device = get_device("host")
    item = TASKS[task](tokens, keep, k_min)
    tuned = apply_best(work_dir, item, device)
    untuned_ms = _time_ms(item.func, device.cpu, item.index_bound)
    tuned_ms = None if tuned is None else _time_ms(tuned.with_attr("global_symbol", "main"), device.cpu,
                                                   item.index_bound)
    return {"task": task, "tokens": tokens, "untuned_ms": untuned_ms, "tuned_ms": tuned_ms,
            "speedup": None if tuned_ms is None else float(untuned_ms / tuned_ms)}
