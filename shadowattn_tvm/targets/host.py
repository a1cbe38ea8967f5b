"""The host lane: this machine's CPU (x86-64 here) runs the whole program for real.

Every graph a phone build emits is also built for this lane and checked against numpy; on the
host the NPU pilot runs as its `llvm` twin (`runtime.lanes`) when the NPU phases are asked for.
"""
from .lanes import Lane, is_aarch64

LANE = Lane(
    name="host", slot="cpu",
    takes=lambda target: target.kind.name == "llvm" and not is_aarch64(target),
    kernel_module="cpu_kernels", lowering="cpu_stages",
    artifacts=("cpu.so",),
    runs_here="this machine's CPU, natively",
)
