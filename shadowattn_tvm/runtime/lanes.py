"""The NPU lane and the packed functions the compiled VM program calls to use it.

A program built with ``sat.pipeline(..., npu=NPUOptions())`` calls ``shadowattn.npu_launch``,
``npu_wait`` and ``npu_run`` per launch unit (signatures in `npu_abi`). This lane implements them
on the host: it picks the cell nearest the launch's actual scales (`npu_abi.select_cell`), runs the
staging kernel and that cell's host twin, and returns int32 scores and the cell's scales.

The lane in use is the innermost ``with NPULane(...)`` block on any thread; without one, a
serial lane runs each launch synchronously on the calling thread, so a compiled program always
runs. `LaneMode.SERIAL` (one lane, launches run synchronously at launch) and
`LaneMode.PIPELINED` (a worker thread runs the launches) execute the same kernels on the same
buffers, so their outputs are bit-identical.

Threads: the NPU lane is a worker thread pinned to its own core; the CPU lane is the thread
that runs the VM, pinned to another core while the lane is active. Each lane's TVM thread pool
is set to `threads_per_lane` (1) with ``runtime.config_threadpool`` on that thread, then the
thread is pinned with ``os.sched_setaffinity`` (after: configuring the pool may set affinity).
TVM binds its pool threads to cores unless TVM_BIND_THREADS=0, which serialises two lanes on
one core: the lane sets TVM_BIND_THREADS=0 in the environment if it is unset (TVM reads it each
time a pool is configured), and benchmark/demo processes set it before importing TVM.
Buffers: each unit's graph inputs and scores are lane-owned and reused by the next block with
the same unit shape (blocks run one after another), like an NPU graph's static I/O buffers.
"""
from __future__ import annotations

import contextlib
import enum
import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from .._compat import tvm
from ..npu.units import LaunchUnit
from ..npu_abi import NPU_LAUNCH, NPU_RUN, NPU_WAIT, select_cell
from .trace import Track, Tracer


class LaneMode(str, enum.Enum):
    SERIAL = "serial"  # one lane: every launch runs synchronously when issued
    PIPELINED = "pipelined"  # NPU lane worker thread + the VM's thread as CPU lane


@dataclass(frozen=True)
class LaneOptions:
    mode: LaneMode = LaneMode.PIPELINED
    cpu_core: int | None = None  # None: the first allowed core
    npu_core: int | None = None  # None: the second allowed core (the first if there is one)
    threads_per_lane: int = 1
    pin: bool = True
    timeout_s: float = 300.0  # a launch not done by then is an error, never a hang

    def __post_init__(self):
        object.__setattr__(self, "mode", LaneMode(self.mode))
        if self.threads_per_lane < 1:
            raise ValueError(f"threads_per_lane must be >= 1, got {self.threads_per_lane}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {self.timeout_s}")


def _config_pool(threads: int) -> None:
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))


@contextlib.contextmanager
def single_thread(threads: int = 1):
    """Run TVM kernels of the calling thread on `threads` pool threads inside the block."""
    previous = tvm.runtime.num_threads()
    affinity = os.sched_getaffinity(0)
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    _config_pool(threads)
    try:
        yield
    finally:
        _config_pool(previous)
        os.sched_setaffinity(0, affinity)


def allowed_cores() -> list:
    """Cores this process may run on (a thread pinned earlier does not narrow the answer)."""
    mine = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        cores = sorted(os.sched_getaffinity(0))
    except OSError:
        cores = sorted(mine)
    os.sched_setaffinity(0, mine)
    return cores


class _Job:
    __slots__ = ("handle", "key", "args", "done", "result", "error")

    def __init__(self, handle, key, args):
        self.handle, self.key, self.args = handle, key, args
        self.done, self.result, self.error = threading.Event(), None, None


class NPULane:
    """Runs NPU launches (stage + bucket graph host twin) serially or on a worker thread."""

    def __init__(self, options: LaneOptions = LaneOptions(), tracer: Tracer | None = None):
        self.options, self.tracer = options, tracer
        self._jobs: dict = {}
        self._handles = itertools.count(1)
        self._buffers: dict = {}
        self._queue: queue.SimpleQueue | None = None
        self._worker: threading.Thread | None = None
        self._saved = None
        self.cores = (None, None)

    # ------------------------------------------------------------ activation
    def __enter__(self) -> "NPULane":
        opts = self.options
        cores = allowed_cores()
        cpu = opts.cpu_core if opts.cpu_core is not None else cores[0]
        npu = opts.npu_core if opts.npu_core is not None else cores[min(1, len(cores) - 1)]
        self.cores = (cpu, npu)
        self._saved = (tvm.runtime.num_threads(), os.sched_getaffinity(0))
        os.environ.setdefault("TVM_BIND_THREADS", "0")
        _config_pool(opts.threads_per_lane)
        if opts.pin:
            os.sched_setaffinity(0, {cpu})
        if opts.mode == LaneMode.PIPELINED:
            self._queue = queue.SimpleQueue()
            started = threading.Event()
            self._worker = threading.Thread(target=self._work, args=(npu, started), name="shadowattn-npu-lane",
                                            daemon=True)
            self._worker.start()
            started.wait()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *_exc) -> None:
        _ACTIVE.remove(self)
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(self.options.timeout_s)  # a stuck worker is a daemon: it cannot hold the exit
            self._worker = self._queue = None
        for job in self._jobs.values():
            job.done.wait(self.options.timeout_s)
        self._jobs.clear()
        threads, affinity = self._saved
        _config_pool(threads)
        os.sched_setaffinity(0, affinity)

    def _work(self, core: int, started: threading.Event) -> None:
        _config_pool(self.options.threads_per_lane)
        if self.options.pin:
            os.sched_setaffinity(0, {core})
        started.set()
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._execute(job)

    # ------------------------------------------------------------ the packed functions
    def launch(self, key, geometry, q, k, q_scale, k_scale, cells, _graph_names, stage, *graphs) -> int:
        start = time.perf_counter_ns()
        job = _Job(next(self._handles), str(key), (geometry, q, k, q_scale, k_scale, cells, stage, graphs))
        self._jobs[job.handle] = job
        if self._queue is None:
            self._execute(job)
        else:
            self._queue.put(job)
        if self.tracer is not None:
            self.tracer.complete(Track.CPU, f"launch {job.key}", start, time.perf_counter_ns(), cat="launch",
                                 unit=job.key)
        return job.handle

    def wait(self, handle, *_keep_alive) -> tuple:
        start = time.perf_counter_ns()
        job = self._jobs.pop(int(handle))
        if not job.done.wait(self.options.timeout_s):
            raise TimeoutError(f"NPU lane: launch {job.key} did not finish within {self.options.timeout_s:g} s "
                               "(LaneOptions.timeout_s); the lane's worker is stuck or was starved")
        if self.tracer is not None:
            self.tracer.complete(Track.CPU, f"wait {job.key}", start, time.perf_counter_ns(), cat="wait", unit=job.key)
            self.tracer.unit = job.key
        if job.error is not None:
            raise RuntimeError(f"NPU lane: launch {job.key} failed: {job.error!r}") from job.error
        return job.result

    # ------------------------------------------------------------ one launch
    def _execute(self, job: _Job) -> None:
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()  # the stage event includes the cell's choice
        try:
            geometry, q, k, q_scale, k_scale, cells, stage, graphs = job.args
            unit = LaunchUnit.from_geometry(geometry)
            table = cells.numpy()
            cell = select_cell(table, q_scale.numpy()[list(unit.heads)], float(k_scale.numpy()[unit.kv_head]))
            q_buf, k_buf, scores, scores3 = self._unit_buffers(unit, str(q.dtype), int(q.shape[3]))
            stage(q, k, q_buf, k_buf, unit.batch, unit.head0, unit.head_stride, unit.kv_head, unit.row0, unit.rows,
                  unit.kv_valid)
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
            graphs[cell](q_buf, k_buf, scores3)
            t2, c2 = time.perf_counter_ns(), time.thread_time_ns()
            fused = unit.fused
            job.result = (scores, tvm.runtime.tensor(np.ascontiguousarray(table[cell, :fused])),
                          tvm.runtime.tensor(np.ascontiguousarray(table[cell, fused:])))
            if self.tracer is not None:
                self.tracer.complete(Track.NPU, f"stage {job.key}", t0, t1, cat="npu_stage", unit=job.key,
                                     thread_cpu_us=(c1 - c0) / 1e3)
                self.tracer.complete(Track.NPU, f"graph {job.key}", t1, t2, cat="npu_graph", unit=job.key, cell=cell,
                                     q_scale=float(table[cell, 0]), k_scale=float(table[cell, fused]),
                                     shape=[fused, unit.q_rows, unit.kv_len], thread_cpu_us=(c2 - c1) / 1e3)
        except Exception as err:  # pylint: disable=broad-except
            job.error = err
        finally:
            job.done.set()

    def _unit_buffers(self, unit: LaunchUnit, dtype: str, head_dim: int):
        key = (unit.batch, unit.kv_head, unit.chunk, unit.fused, unit.q_rows, unit.kv_len, head_dim, dtype)
        bufs = self._buffers.get(key)
        if bufs is None:
            dev = tvm.cpu()
            scores = tvm.runtime.empty((1, unit.fused, unit.q_rows, unit.kv_len), "int32", dev)
            bufs = (tvm.runtime.empty((unit.fused, unit.q_rows, head_dim), dtype, dev),
                    tvm.runtime.empty((unit.kv_len, head_dim), dtype, dev),
                    scores, scores._create_view((unit.fused, unit.q_rows, unit.kv_len)))
            self._buffers[key] = bufs
        return bufs


_ACTIVE: list = []
_DEFAULT: list = []


def current_lane() -> NPULane:
    """The innermost active lane, else a process-wide serial lane (no pinning)."""
    if _ACTIVE:
        return _ACTIVE[-1]
    if not _DEFAULT:
        _DEFAULT.append(NPULane(LaneOptions(mode=LaneMode.SERIAL, pin=False)))
    return _DEFAULT[0]


def _launch(*args):
    return current_lane().launch(*args)


def _wait(handle, *keep_alive):
    return current_lane().wait(handle, *keep_alive)


def _run(*args):
    lane = current_lane()
    return lane.wait(lane.launch(*args))


tvm.register_global_func(NPU_LAUNCH, _launch, override=True)
tvm.register_global_func(NPU_WAIT, _wait, override=True)
tvm.register_global_func(NPU_RUN, _run, override=True)

__all__ = ["NPU_RUN", "NPU_LAUNCH", "NPU_WAIT", "LaneMode", "LaneOptions", "NPULane", "current_lane", "single_thread",
           "allowed_cores"]
