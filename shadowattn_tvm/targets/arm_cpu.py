"""The ARM CPU lane: a phone's Cortex-A cores (aarch64, NEON) run the VM program: top-k, sparse
attention and the rest of the model, and the pilot where the device has no NPU.

The same kernel rules and lowering stages as the host lane at the ARM target's vector width; the
library is cross-compiled with Debian's aarch64 g++ (`targets.export`).
"""
from .lanes import Lane, is_aarch64

LANE = Lane(
    name="arm_cpu", slot="cpu",
    takes=lambda target: target.kind.name == "llvm" and is_aarch64(target),
    kernel_module="cpu_kernels", lowering="cpu_stages",
    artifacts=("cpu.so",),
    runs_here="the emulated phone: a TVM RPC server under qemu-aarch64 on 127.0.0.1",
)
