"""Artifact writers: each puts one kind of file into the (temporary) build directory.

`DEFAULT_WRITERS` is the extension point: the NPU lane writes the Hexagon graph library and the
launch plan for ``device.npu`` (`builder.npu`), the Adreno lane OpenCL C when ``device.gpu`` is
set (`builder.adreno`), and every build gets `reference/` (`builder.reference`). A
writer gets the `BuildContext` and returns the `Artifact`s it wrote; the manifest lists them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .._compat import tvm
from ..calibrate.profile import SparsityProfile
from ..npu.options import NPUOptions
from ..ir_attrs import attention_report
from ..targets import DeviceProfile
from ..targets import get as get_device
from ..targets.export import export_library
from ..targets.lanes import lanes_of
from . import npu as npu_lane
from . import reference
from .manifest import Artifact
from .models import ModelBuild
from .options import BuildOptions, lower_ir

CPU_MODULE = "cpu.so"
REPORT = "report.json"
TOKENIZER = "tokenizer"


@dataclass
class BuildContext:
    device: DeviceProfile
    model: ModelBuild
    options: BuildOptions
    out: Path  # the temporary directory being filled
    log: Callable[[str], None] = print
    npu: NPUOptions | None = None  # the NPU phases' options when the device has an NPU
    ir: Any = None  # the CPU module's shadowAttn-level IR (`options.shadowattn_ir`): what every writer reads
    executable: Any = None  # the CPU module (set by the cpu-module writer)


@dataclass(frozen=True)
class ArtifactWriter:
    name: str
    lane: str | None  # the `targets.lanes.Lane` name it writes for; None: every build
    write: Callable[[BuildContext], list]

    def applies(self, device: DeviceProfile) -> bool:
        return self.lane is None or self.lane in {lane.name for lane in lanes_of(device)}


def _write_cpu_module(ctx: BuildContext) -> list:
    ctx.log(f"[compile] {ctx.model.name} for {ctx.device.name} cpu ({ctx.device.cpu.kind.name}"
            f"{', ' + str(ctx.device.cpu.attrs['mcpu']) if 'mcpu' in ctx.device.cpu.attrs else ''})")
    ctx.executable = lower_ir(ctx.ir, ctx.device.cpu, ctx.options, log=ctx.log)
    export_library(ctx.executable, ctx.out / CPU_MODULE, ctx.device)
    return [Artifact(CPU_MODULE, "cpu-module", "cpu")]


def _write_npu_library(ctx: BuildContext) -> list:
    return npu_lane.write_library(ctx.ir, ctx.device, ctx.out, ctx.log)


def _write_npu_plan(ctx: BuildContext) -> list:
    return npu_lane.write_plan(ctx.ir, ctx.device, ctx.out)


def _write_reference(ctx: BuildContext) -> list:
    """reference/: seeded data inputs and the host build's output on them (deploy compares to it); a
    generation build's greedy tokens from its reference prompt."""
    host = get_device("host")
    executable = ctx.executable
    if str(ctx.device.cpu) != str(host.cpu):  # the same shadowAttn-level program, lowered for this host
        ctx.log("[compile] reference: the build's program lowered for this host")
        executable = lower_ir(ctx.ir, host.cpu, ctx.options)
    elif (ctx.out / CPU_MODULE).is_file():
        # the exported library: the executable's first run would make LLVM generate its code again
        executable = tvm.runtime.load_module(str(ctx.out / CPU_MODULE))
    if ctx.model.generation is not None:
        return reference.write_generation(ctx.out, ctx.model, executable)
    return reference.write(ctx.out, ctx.model, executable)


def _write_tokenizer(ctx: BuildContext) -> list:
    """tokenizer/: a generation build's tokenizer, so deploy can encode prompts without the model file."""
    if ctx.model.generation is None or ctx.model.tokenizer is None:
        return []
    folder = ctx.model.tokenizer.save(ctx.out / TOKENIZER).parent
    return [Artifact(p.relative_to(ctx.out).as_posix(), "tokenizer") for p in sorted(folder.iterdir())]


def _write_adreno_kernels(ctx: BuildContext) -> list:
    """adreno/<kernel>.cl per GPU kernel and adreno/kernels.json (arguments by name, launch sizes)."""
    from . import adreno  # lazily: it imports the GPU schedules

    ctx.log(f"[compile] {ctx.model.name} for {ctx.device.name} gpu (OpenCL C, {ctx.device.gpu.kind.name})")
    profile = ctx.options.profile if ctx.options.profile is not None else SparsityProfile.uniform(ctx.options.keep)
    kernels, cpu_only = adreno.adreno_kernels(ctx.ir, ctx.device.gpu, profile, ctx.options.k_min)
    folder = ctx.out / adreno.DIRECTORY
    folder.mkdir()
    artifacts = []
    for kernel in kernels:
        (folder / f"{kernel.name}.cl").write_text(kernel.program.source)
        artifacts.append(Artifact(f"{adreno.DIRECTORY}/{kernel.name}.cl", "opencl-source", "gpu"))
    table = {"target": json.loads(str(ctx.device.gpu)), "kernels": {k.name: k.to_json() for k in kernels},
             "cpu_only": [{"layer": layer, "reason": reason} for layer, reason in sorted(cpu_only.items())]}
    if cpu_only:
        ctx.log(f"[compile] {len(cpu_only)} masked attention layers keep top-k and sparse attention on the CPU "
                f"(see {adreno.DIRECTORY}/{adreno.TABLE})")
    (folder / adreno.TABLE).write_text(json.dumps(table, indent=1) + "\n")
    return artifacts + [Artifact(f"{adreno.DIRECTORY}/{adreno.TABLE}", "opencl-kernels", "gpu")]


def _write_report(ctx: BuildContext) -> list:
    (ctx.out / REPORT).write_text(json.dumps(attention_report(ctx.ir).to_json(), indent=1) + "\n")
    return [Artifact(REPORT, "report")]


DEFAULT_WRITERS: tuple = (
    ArtifactWriter("cpu-module", None, _write_cpu_module),  # every device has a CPU lane (host or arm_cpu)
    # the report, the NPU library and the plan are read from what the CPU module's compile left
    ArtifactWriter("report", None, _write_report),
    ArtifactWriter("npu-library", "hexagon", _write_npu_library),
    ArtifactWriter("npu-plan", "hexagon", _write_npu_plan),
    ArtifactWriter("adreno-opencl", "adreno", _write_adreno_kernels),
    ArtifactWriter("tokenizer", None, _write_tokenizer),
    ArtifactWriter("reference", None, _write_reference),
)
