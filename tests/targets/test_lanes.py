"""The lane registry: each device's targets map to one lane module, by the lane's own rule."""
from __future__ import annotations

import pytest
import tvm

from shadowattn_tvm.targets import cpu_kernels as cpu
from shadowattn_tvm.targets import get, known
from shadowattn_tvm.targets.lanes import all_lanes, lane_for, lanes_of


def test_each_device_slot_gets_its_lane():
    assert [lane.name for lane in lanes_of(get("host"))] == ["host"]
    for name in known():
        device = get(name)
        slots = [s for s in ("cpu", "gpu", "npu") if getattr(device, s) is not None]
        assert [lane.slot for lane in lanes_of(device)] == slots
    assert [lane.name for lane in lanes_of(get("snapdragon-8gen3"))] == ["arm_cpu", "adreno", "hexagon"]


def test_lanes_are_distinct_and_cpu_lanes_share_the_cpu_kernel_rules():
    lanes = all_lanes()
    assert len({lane.name for lane in lanes}) == len(lanes) == 4
    assert lane_for(None).kernels() is cpu and lane_for(get("snapdragon-8gen3").cpu).kernels() is cpu
    assert all(lane.artifacts and lane.runs_here for lane in lanes)


def test_lanes_without_pass_kernels_and_unknown_targets_say_so():
    with pytest.raises(ValueError, match="emit no kernels for the adreno lane.*device.cpu"):
        lane_for(get("snapdragon-8gen3").gpu).kernels()
    with pytest.raises(ValueError, match=r"no shadowAttn lane takes target .*kind cuda.*host \(cpu\)"):
        lane_for(tvm.target.Target("cuda"))
