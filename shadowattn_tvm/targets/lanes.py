"""The lanes a build can put code on, one protocol for all, and the registry that picks one.

    lane = lanes.lane_for(device.cpu)      # the host, ARM CPU, Adreno or Hexagon lane of a target
    lane.kernels()                          # the schedules of the kernels the passes emit for it
    lane.lowering                           # how phase 5 lowers Relax for it ("cpu_stages", "tvm", None)
    [l.name for l in lanes.lanes_of(device)]  # every lane of a device profile, CPU first

Each lane module (`targets.host`, `targets.arm_cpu`, `targets.adreno`, `targets.hexagon`)
defines one frozen `Lane`: which targets it takes, where its kernel rules live, how it is lowered,
what it writes into a build directory and what runs it on this machine. Passes and the builder
ask the registry, never test ``target.kind`` themselves. Compiler side only: the deploy path
imports none of this.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Callable


@dataclass(frozen=True)
class Lane:
    name: str  # "host", "arm_cpu", "adreno", "hexagon"
    slot: str  # the device profile slot it fills: "cpu", "gpu" or "npu"
    takes: Callable  # (tvm Target) -> bool
    kernel_module: str | None  # `shadowattn_tvm.targets` module scheduling the kernels the passes
    #                            emit into the Relax program for this lane (None: the passes emit none)
    lowering: str | None  # phase 5: "cpu_stages" (TVM's CPU stages + ours), "tvm" (TVM's default
    #                       pipeline for the target) or None (not a Relax target: built by its writer)
    artifacts: tuple  # what it adds to a build directory
    runs_here: str  # what executes its code on this machine (no phone is attached)

    def kernels(self) -> ModuleType:
        """The schedule module: schedule_absmax, schedule_quantize, schedule_pilot and
        schedule_sparse_attention (PrimFunc -> scheduled PrimFunc)."""
        if self.kernel_module is None:
            raise ValueError(f"the shadowAttn passes emit no kernels for the {self.name} lane ({self.slot}): "
                             "compile the model for the device's CPU target (device.cpu)")
        return importlib.import_module(f"{__package__}.{self.kernel_module}")


_MODULES = ("host", "arm_cpu", "adreno", "hexagon")


def all_lanes() -> tuple:
    return tuple(importlib.import_module(f"{__package__}.{m}").LANE for m in _MODULES)


def lane_for(target) -> Lane:
    """The lane of `target` (a tvm Target, or None for this host's CPU)."""
    if target is None:
        return importlib.import_module(f"{__package__}.host").LANE
    for lane in all_lanes():
        if lane.takes(target):
            return lane
    raise ValueError(f"no shadowAttn lane takes target {target} (kind {target.kind.name}); lanes: "
                     + ", ".join(f"{lane.name} ({lane.slot})" for lane in all_lanes()))


def lanes_of(device) -> list:
    """The lanes of a `DeviceProfile`, in slot order cpu, gpu, npu."""
    return [lane_for(t) for t in (device.cpu, device.gpu, device.npu) if t is not None]


def is_aarch64(target) -> bool:
    return "aarch64" in str(target.attrs.get("mtriple", "")) or "arm_cpu" in target.keys


__all__ = ["Lane", "all_lanes", "lane_for", "lanes_of"]
