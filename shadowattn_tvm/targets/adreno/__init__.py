"""The Adreno GPU lane: top-k and sparse attention of each unmasked block as OpenCL C.

Kernel rules in `targets.adreno.schedules` (GPU thread bindings), source by `targets.adreno.opencl`, written by
`builder.adreno`; the Relax program for an OpenCL target is lowered by TVM's own pipeline.
"""
from ..lanes import Lane

LANE = Lane(
    name="adreno", slot="gpu",
    takes=lambda target: target.kind.name in ("opencl", "vulkan"),
    kernel_module=None,  # its kernels are emitted by builder.adreno, not by the passes
    lowering="tvm",
    artifacts=("adreno/",),
    runs_here="PoCL via pyopencl (fp32): kernel numerics only",
)
