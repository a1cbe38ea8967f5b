"""The Hexagon NPU lane: every pilot as static INT8 bucket graphs (`ops.npu_graph`), scheduled
onto HVX by `targets.hexagon.schedules`, compiled into one graph library by `targets.hexagon.library`, written
by `builder.npu` with the launch plan; the VM program calls it by name (`npu_abi`).
"""
from ..lanes import Lane

LANE = Lane(
    name="hexagon", slot="npu",
    takes=lambda target: target.kind.name == "hexagon",
    kernel_module=None, lowering=None,  # graphs are built by targets.hexagon.library, not by tvm.compile
    artifacts=("npu/", "plan.json"),
    runs_here="the emulated phone's NPU service: the graph library under qemu-hexagon",
)
