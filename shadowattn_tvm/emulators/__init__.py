"""The stand-ins for a phone on this x86 host: the emulated phone (`phone`, `phone_image`: a TVM RPC
server under qemu-aarch64), its NPU service (`npu_service`, `hexagon`: the build's Hexagon graphs
under qemu-hexagon) and PoCL for the Adreno OpenCL C (`opencl`). Tool installs live in
`toolchain`. Nothing here is imported by the deploy path or by a pass."""
