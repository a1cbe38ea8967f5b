"""NPU lane: cell selection at launch, serial vs pipelined execution, threads, errors, buffers."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import tvm

from shadowattn_tvm.npu.units import LaunchUnit
from shadowattn_tvm.runtime import lanes
from shadowattn_tvm.runtime.lanes import LaneMode, LaneOptions, NPULane, current_lane

UNIT = LaunchUnit(layer=2, batch=0, head0=2, head_stride=1, kv_head=1, row0=4, rows=4, kv_valid=8, fused=2,
                  q_rows=4, kv_len=8, top_k=3, chunk=1)


class _Kernels:
    """Python stand-ins for the stage kernel and two bucket graphs; they record where they ran."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def stage(self, q, k, q_buf, k_buf, *scalars):
        self.calls.append(("stage", tuple(int(s) for s in scalars), threading.get_ident(), os.sched_getaffinity(0),
                           (tuple(q_buf.shape), tuple(k_buf.shape))))

    def graph(self, cell):
        def run(q_buf, k_buf, scores):
            if self.fail:
                raise ValueError("graph exploded")
            self.calls.append((f"graph{cell}", scores.shape, threading.get_ident(), os.sched_getaffinity(0)))
            scores.copyfrom(np.full(scores.shape, cell, np.int32))
        return run


def _args(kernels, q_actual=(0.1, 0.1, 0.11, 0.09), k_actual=(0.5, 0.21)):
    t = lambda a, dt="float32": tvm.runtime.tensor(np.asarray(a, dt))  # noqa: E731
    cells = t([[0.5, 0.5, 0.5], [0.1, 0.1, 0.2]])  # cell 1 is nearest heads 2, 3 and KV head 1
    q, k = t(np.zeros((1, 4, 8, 16))), t(np.zeros((1, 2, 8, 16)))
    return ("L2.b0.g1.c1", UNIT.geometry(), q, k, t(q_actual), t(k_actual), cells, "g_c0,g_c1", kernels.stage,
            kernels.graph(0), kernels.graph(1))


@pytest.mark.parametrize("mode", list(LaneMode))
def test_launch_picks_the_nearest_cell_and_wait_returns_its_scores_and_scales(mode):
    kernels = _Kernels()
    with NPULane(LaneOptions(mode=mode)) as lane:
        handle = lane.launch(*_args(kernels))
        scores, q_scale, k_scale = lane.wait(handle)
    assert scores.shape == (1, 2, 4, 8) and (scores.numpy() == 1).all()
    np.testing.assert_allclose(q_scale.numpy(), [0.1, 0.1])
    np.testing.assert_allclose(k_scale.numpy(), [0.2])
    stage = next(c for c in kernels.calls if c[0] == "stage")
    assert stage[1] == (0, 2, 1, 1, 4, 4, 8)  # batch, head0, head_stride, kv_head, row0, rows, kv_valid
    assert stage[4] == ((2, 4, 16), (8, 16))  # Q rows per fused head; the group's K head once
    ran_on = {c[2] for c in kernels.calls}
    if mode == LaneMode.SERIAL:
        assert ran_on == {threading.get_ident()}
    else:
        assert threading.get_ident() not in ran_on


def test_pipelined_lane_pins_its_worker_and_restores_the_caller():
    before = (os.sched_getaffinity(0), tvm.runtime.num_threads())
    kernels = _Kernels()
    with NPULane(LaneOptions(mode=LaneMode.PIPELINED)) as lane:
        cpu, npu = lane.cores
        assert os.sched_getaffinity(0) == {cpu}
        lane.wait(lane.launch(*_args(kernels)))
    assert all(c[3] == {npu} for c in kernels.calls)
    if len(lanes.allowed_cores()) > 1:
        assert cpu != npu
    assert (os.sched_getaffinity(0), tvm.runtime.num_threads()) == before
    assert os.environ.get("TVM_BIND_THREADS") is not None


def test_a_failing_launch_raises_at_its_wait_and_the_lane_goes_on():
    with NPULane(LaneOptions(mode=LaneMode.PIPELINED)) as lane:
        bad = lane.launch(*_args(_Kernels(fail=True)))
        with pytest.raises(RuntimeError, match=r"launch L2\.b0\.g1\.c1 failed: ValueError\('graph exploded'\)"):
            lane.wait(bad)
        scores, _, _ = lane.wait(lane.launch(*_args(_Kernels())))
        assert (scores.numpy() == 1).all()


def test_a_launch_that_never_finishes_is_a_timeout_error_not_a_hang():
    release = threading.Event()
    kernels = _Kernels()
    kernels.stage = lambda *_args: release.wait(30)  # a stuck NPU graph
    with NPULane(LaneOptions(mode=LaneMode.PIPELINED, timeout_s=0.2)) as lane:
        handle = lane.launch(*_args(kernels))
        with pytest.raises(TimeoutError, match=r"launch L2\.b0\.g1\.c1 did not finish within 0\.2 s"):
            lane.wait(handle)
        release.set()


def test_unit_buffers_are_reused_like_static_graph_buffers():
    with NPULane(LaneOptions(mode=LaneMode.SERIAL, pin=False)) as lane:
        first = lane.wait(lane.launch(*_args(_Kernels())))[0]
        second = lane.wait(lane.launch(*_args(_Kernels())))[0]
    assert first.data_ptr == second.data_ptr


def test_without_a_lane_launches_run_serially_on_the_caller():
    lane = current_lane()
    assert lane.options.mode == LaneMode.SERIAL and not lane.options.pin
    with NPULane(LaneOptions(mode=LaneMode.SERIAL, pin=False)) as inner:
        assert current_lane() is inner
    assert current_lane() is lane
    for name in (lanes.NPU_LAUNCH, lanes.NPU_WAIT, lanes.NPU_RUN):
        assert tvm.get_global_func(name) is not None


def test_lane_options_are_checked():
    with pytest.raises(ValueError, match="threads_per_lane"):
        LaneOptions(threads_per_lane=0)
    with pytest.raises(ValueError):
        LaneOptions(mode="sideways")
    with pytest.raises(ValueError, match="timeout_s"):
        LaneOptions(timeout_s=0)
