"""Chrome trace of the two lanes: format, interval arithmetic, and a real pipelined block."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tvm
from tvm import relax

import shadowattn_tvm as sat
from shadowattn_tvm.npu import GivenCosts, GridOptions, NPUOptions, ScaleStats
from shadowattn_tvm.runtime.lanes import LaneMode, LaneOptions, NPULane
from shadowattn_tvm.testing import AttentionSpec, attention_module, random_inputs
from shadowattn_tvm.runtime.trace import Track, Tracer, busy, overlap_us, replay_dedicated, validate

MS = 1_000_000  # ns


def _synthetic() -> dict:
    t = Tracer("test")
    o = t.origin_ns
    t.complete(Track.CPU, "launch u0", o, o + MS // 10, cat="launch", unit="u0")
    t.complete(Track.NPU, "graph u0", o + 1 * MS, o + 4 * MS, cat="npu_graph", unit="u0", thread_cpu_us=3000.0)
    t.complete(Track.CPU, "wait u0", o + 1 * MS, o + 4 * MS, cat="wait", unit="u0")
    t.complete(Track.CPU, "sat_topk", o + 4 * MS, o + 6 * MS, unit="u0", thread_cpu_us=2000.0)
    t.complete(Track.NPU, "graph u1", o + 4 * MS, o + 7 * MS, cat="npu_graph", unit="u1", thread_cpu_us=3000.0)
    t.complete(Track.CPU, "sat_sparse_attention", o + 6 * MS, o + 8 * MS, unit="u0", thread_cpu_us=2000.0)
    return t.to_json()


def test_trace_is_chrome_json_with_one_named_track_per_lane(tmp_path):
    trace = _synthetic()
    assert validate(trace) == []
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert set(names) == {int(Track.NPU), int(Track.CPU)} and "NPU" in names[1] and "CPU" in names[2]
    path = Tracer().save(tmp_path / "sub" / "t.json")
    assert validate(json.loads(path.read_text())) == []
    assert [e for e in trace["traceEvents"] if e["ph"] == "X"][0]["ts"] == pytest.approx(0.0)


def test_validate_names_what_is_wrong():
    assert validate({"events": []}) == ["no traceEvents list"]
    bad = {"traceEvents": [{"name": "x", "ph": "X", "pid": 1, "tid": 2, "ts": 0.0, "dur": -1.0}]}
    problems = validate(bad)
    assert any("negative duration" in p for p in problems) and any("NPU" in p for p in problems)


def test_busy_intervals_overlap_and_dedicated_replay():
    trace = _synthetic()
    assert busy(trace, Track.NPU) == [[1000.0, 7000.0]]
    assert busy(trace, Track.CPU, "kernel") == [[4000.0, 8000.0]]
    assert overlap_us(trace) == pytest.approx(3000.0)
    serial, pipelined = replay_dedicated(trace)
    assert serial == pytest.approx(10.0)  # 3 + 3 NPU + 2 + 2 CPU, ms
    # u1 was never launched by the CPU lane in this toy trace: only u0's 3 ms gate the CPU lane
    assert pipelined == pytest.approx(7.0)


_PIPELINED_DEMO = """
import json, sys
from shadowattn_tvm.npu import GivenCosts
from shadowattn_tvm.npu.demo import run_pipelined_demo
r = run_pipelined_demo(tokens=256, keep=0.2, k_min=8, repeat=1, trace=sys.argv[1], kv_step=128,
                       costs=GivenCosts(npu_ms=1.0, cpu_ms=2.0))
print(json.dumps(dict(identical=r.identical, err=r.max_err_vs_reference, launches=r.launches, trace=r.trace,
                      source=r.cost_source, planner_ms=r.planner_ms, table=r.table())))
"""


def test_pipelined_demo_writes_a_trace_of_both_lanes(tmp_path):
    """In a process of its own with two TVM threads (the suite's xdist workers get one each). Whether
    the lanes' intervals overlap here depends on the machine's load (one busy core serialises them);
    the overlap itself is checked with a slow NPU below."""
    import os
    import subprocess
    import sys

    path = tmp_path / "block.json"
    run = subprocess.run([sys.executable, "-c", _PIPELINED_DEMO, str(path)], capture_output=True, text=True,
                         env={**os.environ, "TVM_NUM_THREADS": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["identical"] and result["err"] < 1e-4  # float32 kernels vs float64 numpy
    assert result["launches"] == 4 and result["trace"] == str(path) and result["source"] == "given"
    trace = json.loads(path.read_text())
    assert validate(trace) == []
    launched = {e["args"]["unit"] for e in trace["traceEvents"] if e.get("cat") == "npu_graph"}
    assert len(launched) == 4
    kernels = {e["name"] for e in trace["traceEvents"] if e.get("tid") == int(Track.CPU) and e.get("cat") == "kernel"}
    assert {"sat_topk", "sat_absmax"} <= kernels and any(k.startswith("sat_sparse_attention") for k in kernels)
    assert result["planner_ms"] < 1.0 and "host latency" in result["table"]


@pytest.mark.slow
def test_two_lane_demo_is_heap_safe_at_small_sizes(tmp_path):
    """Host-profiled costs at 64/128 tokens once wrote top-k indices past their buffer ("double
    free or corruption", or a hang): run the CLI under glibc's heap checker at 64 tokens."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165"}
    run = subprocess.run([sys.executable, "-m", "shadowattn_tvm.cli.main", "demo", "block", "--tokens", "64",
                          "--trace", str(tmp_path / "t.json")], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "bit-identical" in run.stdout


class _SlowNPU(NPULane):
    """An NPU lane whose every launch takes >= 30 ms, like an NPU slower than this host's twins. The
    wait is a sleep (no core held): the lanes overlap however loaded the machine is."""

    def _execute(self, job):
        geometry, q, k, q_scale, k_scale, cells, stage, graphs = job.args

        def slow_stage(*args):
            time.sleep(0.03)
            return stage(*args)

        job.args = (geometry, q, k, q_scale, k_scale, cells, slow_stage, graphs)
        super()._execute(job)


def test_cpu_lane_runs_kernels_while_an_npu_launch_is_in_flight():
    spec = AttentionSpec(q_len=64, head_dim=16, gqa="expand", mask="causal_where")
    stats = ScaleStats(q_mean=(0.02, 0.03, 0.04, 0.05), q_std=(0.004,) * 4, k_mean=(0.06, 0.08), k_std=(0.01, 0.01))
    options = NPUOptions(kv_buckets=(16, 32, 48, 64), stats=stats, costs=GivenCosts(npu_ms=2.0, cpu_ms=2.0),
                         grid=GridOptions(q_points=1, k_points=1))
    ex = tvm.compile(attention_module(spec), target=tvm.target.Target({"kind": "llvm", "num-cores": 2}),
                     relax_pipeline=sat.pipeline(keep=0.25, k_min=4, npu=options))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(x) for x in random_inputs(spec, seed=3)]
    with NPULane(LaneOptions(mode=LaneMode.SERIAL)):
        serial = vm["main"](*args).numpy()
    tracer = Tracer("slow NPU")
    with _SlowNPU(LaneOptions(mode=LaneMode.PIPELINED), tracer=tracer), tracer.instrument(vm):
        pipelined = vm["main"](*args).numpy()
    assert np.array_equal(serial, pipelined)
    trace = tracer.to_json()
    units = {e["args"]["unit"] for e in trace["traceEvents"] if e.get("cat") == "npu_stage"}
    assert len(units) == 8  # 2 KV groups x 4 chunks, each >= 30 ms on the NPU lane
    # while the NPU lane works on a later launch, the CPU lane runs top-k and sparse of earlier units
    events = trace["traceEvents"]
    npu = [(e["ts"], e["ts"] + e["dur"], e["args"]["unit"]) for e in events if e.get("cat") == "npu_stage"]
    topk = [(e["ts"], e["args"]["unit"]) for e in events if e["name"] == "sat_topk"]
    assert len(topk) == 8
    in_flight = [next((u for s, t, u in npu if s <= ts <= t and u != unit), None) for ts, unit in topk]
    assert in_flight[-1] is None, in_flight  # the last unit has nothing after it
    # every earlier one should; a CPU lane starved for a whole 30 ms launch on a loaded machine may miss one
    assert sum(u is not None for u in in_flight[:-1]) >= 5, in_flight
    assert overlap_us(trace) > 0
