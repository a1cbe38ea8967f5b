"""Artifact writers: each puts one kind of file into the (temporary) build directory.

`DEFAULT_WRITERS` is the extension point: the Adreno lane writes OpenCL C when ``device.gpu`` is
set (`builder.adreno`), the NPU lane (later) the Hexagon graph library for ``device.npu``. A
writer gets the `BuildContext` and returns the `Artifact`s it wrote; the manifest lists them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..calibrate.profile import SparsityProfile
from ..passes import AttentionReport
from ..targets import DeviceProfile
from ..targets.export import export_library
from .manifest import Artifact
from .models import ModelBuild
from .options import BuildOptions, compile_model

CPU_MODULE = "cpu.so"
REPORT = "report.json"


@dataclass
class BuildContext:
    device: DeviceProfile
    model: ModelBuild
    options: BuildOptions
    out: Path  # the temporary directory being filled
    report: AttentionReport = field(default_factory=AttentionReport)
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class ArtifactWriter:
    name: str
    applies: Callable[[DeviceProfile], bool]
    write: Callable[[BuildContext], list]


def _write_cpu_module(ctx: BuildContext) -> list:
    ctx.log(f"[compile] {ctx.model.name} for {ctx.device.name} cpu ({ctx.device.cpu.kind.name}"
            f"{', ' + str(ctx.device.cpu.attrs['mcpu']) if 'mcpu' in ctx.device.cpu.attrs else ''})")
    executable = compile_model(ctx.model.mod, ctx.device.cpu, ctx.options, ctx.report, log=ctx.log)
    export_library(executable, ctx.out / CPU_MODULE, ctx.device)
    return [Artifact(CPU_MODULE, "cpu-module", "cpu")]


def _write_adreno_kernels(ctx: BuildContext) -> list:
    """adreno/<kernel>.cl per GPU kernel and adreno/kernels.json (arguments by name, launch sizes)."""
    from . import adreno  # lazily: it imports the GPU schedules

    ctx.log(f"[compile] {ctx.model.name} for {ctx.device.name} gpu (OpenCL C, {ctx.device.gpu.kind.name})")
    profile = ctx.options.profile if ctx.options.profile is not None else SparsityProfile.uniform(ctx.options.keep)
    kernels, cpu_only = adreno.adreno_kernels(ctx.model.mod, ctx.device.gpu, profile, ctx.options.k_min)
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
    (ctx.out / REPORT).write_text(json.dumps(ctx.report.to_json(), indent=1) + "\n")
    return [Artifact(REPORT, "report")]


DEFAULT_WRITERS: tuple = (
    ArtifactWriter("cpu-module", lambda device: True, _write_cpu_module),
    # the report is filled while the CPU module compiles, so it is written after it
    ArtifactWriter("report", lambda device: True, _write_report),
    ArtifactWriter("adreno-opencl", lambda device: device.gpu is not None, _write_adreno_kernels),
)
