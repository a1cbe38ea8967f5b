"""Chrome trace-event JSON of the two lanes (opens in Perfetto / chrome://tracing).

One process ("shadowattn attention block"), one track per lane: tid 1 = NPU lane (the host
twins of the bucket graphs), tid 2 = CPU lane (the VM thread: top-k, sparse attention, waits).
Every launch, top-k and sparse call is a complete event (``"ph": "X"``, microseconds).

The NPU lane records its own events (`runtime.lanes`); the CPU lane's kernels are recorded by a
VM instrument (`Tracer.instrument(vm)`), which costs a few microseconds per VM call, so timed
runs are made without it.
"""
from __future__ import annotations

import contextlib
import enum
import json
import threading
import time
from pathlib import Path


class Track(enum.IntEnum):
    NPU = 1
    CPU = 2


TRACK_NAMES = {Track.NPU: "NPU lane (host twin of the bucket graphs)",
               Track.CPU: "CPU lane (VM: top-k, sparse attention)"}
_PID = 1


class Tracer:
    """Collects complete events from both lanes (thread-safe)."""

    def __init__(self, process: str = "shadowattn attention block", track_names: dict | None = None):
        self.process, self.track_names = process, track_names or TRACK_NAMES
        self.origin_ns = time.perf_counter_ns()
        self._events: list = []
        self._lock = threading.Lock()
        self.unit = ""  # the launch unit the CPU lane last waited for (tags its kernels)

    def complete(self, track: Track, name: str, start_ns: int, end_ns: int, cat: str = "kernel", **args) -> None:
        event = {"name": name, "cat": cat, "ph": "X", "pid": _PID, "tid": int(track),
                 "ts": (start_ns - self.origin_ns) / 1e3, "dur": max(end_ns - start_ns, 0) / 1e3}
        if args:
            event["args"] = args
        with self._lock:
            self._events.append(event)

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
        self.origin_ns = time.perf_counter_ns()

    @contextlib.contextmanager
    def instrument(self, vm, skip_prefixes=("vm.", "shadowattn.")):
        """Record every kernel the VM calls (on its thread) as a CPU-lane event.

        Builtins (``vm.*``) are skipped, and so are the NPU calls, which the lane records itself.
        Calls of Relax functions (the NPU block) get ``cat="function"``, kernels ``cat="kernel"``.
        """
        open_calls = []  # [start_ns, thread_cpu_ns, has_nested_calls]

        def callback(_func, symbol, before_run, _ret, *_args):
            symbol = str(symbol)
            if symbol.startswith(skip_prefixes):
                return 0
            if before_run:
                if open_calls:
                    open_calls[-1][2] = True
                open_calls.append([time.perf_counter_ns(), time.thread_time_ns(), False])
            elif open_calls:
                start, cpu, nested = open_calls.pop()
                end, cpu_end = time.perf_counter_ns(), time.thread_time_ns()
                args = {"unit": self.unit} if self.unit else {}
                # a call with calls inside is a Relax function (e.g. the NPU block), not a kernel
                self.complete(Track.CPU, symbol, start, end, cat="function" if nested else "kernel",
                              thread_cpu_us=(cpu_end - cpu) / 1e3, **args)
            return 0

        vm.set_instrument(callback)
        try:
            yield self
        finally:
            vm.set_instrument(lambda *_: 0)

    def events(self) -> list:
        with self._lock:
            body = sorted(self._events, key=lambda e: e["ts"])
        meta = [{"name": "process_name", "ph": "M", "pid": _PID, "tid": 0, "args": {"name": self.process}}]
        for track, label in self.track_names.items():
            meta.append({"name": "thread_name", "ph": "M", "pid": _PID, "tid": int(track), "args": {"name": label}})
            meta.append({"name": "thread_sort_index", "ph": "M", "pid": _PID, "tid": int(track),
                         "args": {"sort_index": int(track)}})
        return meta + body

    def to_json(self) -> dict:
        return {"traceEvents": self.events(), "displayTimeUnit": "ms"}

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=0))
        return path


def validate(trace: dict) -> list:
    """Problems that would stop Perfetto from loading the trace as two lane tracks ([] = fine)."""
    problems = []
    events = trace.get("traceEvents") if isinstance(trace, dict) else None
    if not isinstance(events, list):
        return ["no traceEvents list"]
    named = {e.get("tid") for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    for track in Track:
        if int(track) not in named:
            problems.append(f"track {track.name} (tid {int(track)}) has no thread_name")
    for i, e in enumerate(events):
        if e.get("ph") != "X":
            continue
        for key, kind in (("name", str), ("pid", int), ("tid", int), ("ts", (int, float)), ("dur", (int, float))):
            if not isinstance(e.get(key), kind):
                problems.append(f"event {i} field {key!r} missing or not {kind}")
        if isinstance(e.get("dur"), (int, float)) and e["dur"] < 0:
            problems.append(f"event {i} has a negative duration")
    return problems


def busy(trace: dict, track: Track, cat: str | None = None) -> list:
    """Merged [start, end] intervals (µs) in which `track` runs complete events (of `cat`)."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace["traceEvents"]
                   if e.get("ph") == "X" and e.get("tid") == int(track) and (cat is None or e.get("cat") == cat))
    merged = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def replay_dedicated(trace: dict) -> tuple:
    """(serial_ms, pipelined_ms) of a traced pipelined block replayed with each lane on a core of
    its own: every event takes its thread CPU time (``args.thread_cpu_us``, time actually spent
    running), a launch is queued on the NPU lane when the CPU lane issues it, and a wait holds the
    CPU lane until its launch is done. A model from measured kernel times for machines shared
    with other jobs, where wall time measures the other jobs too; not a measurement of wall time.
    """
    events = sorted((e for e in trace["traceEvents"] if e.get("ph") == "X"), key=lambda e: e["ts"])
    cost = lambda e: e.get("args", {}).get("thread_cpu_us", 0.0)  # noqa: E731
    npu_work = {}
    for e in events:
        if e["tid"] == int(Track.NPU):
            unit = e["args"]["unit"]
            npu_work[unit] = npu_work.get(unit, 0.0) + cost(e)
    cpu_t = npu_t = 0.0
    done = {}
    for e in events:
        if e["tid"] != int(Track.CPU):
            continue
        if e.get("cat") == "launch":
            unit = e["args"]["unit"]
            npu_t = max(npu_t, cpu_t) + npu_work.get(unit, 0.0)
            done[unit] = npu_t
        elif e.get("cat") == "wait":
            cpu_t = max(cpu_t, done.get(e["args"]["unit"], 0.0))
        elif e.get("cat") == "kernel":
            cpu_t += cost(e)
    serial = sum(npu_work.values()) + sum(cost(e) for e in events
                                          if e["tid"] == int(Track.CPU) and e.get("cat") == "kernel")
    return serial / 1e3, max(cpu_t, npu_t) / 1e3


def overlap_us(trace: dict, cpu_cat: str = "kernel") -> float:
    """Time (µs) in which the NPU lane and the CPU lane's kernels run at once."""
    total, npu, cpu = 0.0, busy(trace, Track.NPU), busy(trace, Track.CPU, cpu_cat)
    i = j = 0
    while i < len(npu) and j < len(cpu):
        total += max(0.0, min(npu[i][1], cpu[j][1]) - max(npu[i][0], cpu[j][0]))
        if npu[i][1] < cpu[j][1]:
            i += 1
        else:
            j += 1
    return total


__all__ = ["Track", "Tracer", "validate", "busy", "overlap_us", "replay_dedicated", "TRACK_NAMES"]
