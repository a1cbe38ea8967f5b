"""`compile_to_dir`: run the artifact writers for a device into a staging directory, then the manifest.

The directory gets one file per artifact writer (``cpu.so``, ``report.json``, ``npu/``,
``plan.json``, ``adreno/``, ``reference/``) and ``manifest.json`` (device, targets, inputs,
options, sha256 of every file). It is written next to its destination and swapped in whole, so a
reader never sees old and new mixed.
"""
from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path

from .._compat import tvm
from ..calibrate.profile import SparsityProfile
from ..ir_attrs import attention_report
from ..report import AttentionReport
from ..targets import DeviceProfile
from ..targets import get as get_device
from . import manifest
from .artifacts import DEFAULT_WRITERS, BuildContext
from . import npu as npu_lane
from . import reference
from .directory import staging
from .models import DEFAULT_TOKENS, ModelBuild, get_model
from .options import BuildOptions, shadowattn_ir

__all__ = ["compile_to_dir", "BuildResult"]


def _lanes(device: DeviceProfile, ctx: BuildContext) -> dict:
    """Where each stage of shadowAttn runs in this build (deploy and users read it)."""
    if ctx.npu is not None:
        from ..ir_attrs import layer_plans

        launches = sum(len(p.order) for p in layer_plans(ctx.ir))
        pilot = {"lane": "npu", "target": str(device.npu.attrs.get("mcpu", "hexagon")), "launches": launches,
                 "library": f"{npu_lane.DIRECTORY}/", "plan": npu_lane.PLAN}
    else:
        pilot = {"lane": "cpu", "reason": f"{device.name} has no NPU: the INT8 pilot runs in cpu.so"}
    return {"pilot": pilot, "topk_sparse": "cpu" if device.gpu is None else "cpu (gpu kernels in adreno/)"}


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    manifest: dict
    report: AttentionReport
    seconds: float

    def summary(self) -> str:
        groups: dict = {}  # a top-level file, or a directory with its file count
        for name, info in self.manifest["files"].items():
            top = name.split("/", 1)[0] + ("/" if "/" in name else "")
            count, size = groups.get(top, (0, 0))
            groups[top] = (count + 1, size + info["bytes"])
        files = ", ".join(f"{name} ({f'{n} files, ' if name.endswith('/') else ''}{size / 1024:.0f} KiB)"
                          for name, (n, size) in groups.items())
        return (f"built {self.manifest['model']['name']} for {self.manifest['device']['name']} in "
                f"{self.seconds:.1f} s -> {self.out_dir}: {files}; {self.report.summary()}")


def compile_to_dir(device: str | DeviceProfile, out_dir: str | Path, *, model: "str | ModelBuild" = "default",
                   tokens: int = DEFAULT_TOKENS, keep: float | None = 0.2, k_min: int = 16,
                   profile: SparsityProfile | None = None,
                   writers: tuple = DEFAULT_WRITERS, tune_logs: str | Path | None = None,
                   capacity: int | None = None, prompt: str | None = None, selection: str = "head",
                   log=print) -> BuildResult:
    """Compile `model` at `tokens` for `device` (a profile name, file or `DeviceProfile`) into `out_dir`.

    model: `default`, `smollm2`, a .gguf or .onnx path (`models.get_model`, exported at `tokens`), or
    a `models.ModelBuild` (e.g. `models.source_build` of any `frontend.ModelSource`).

    capacity: a generation build (smollm2 or a .gguf): prefill of `tokens` into a KV cache of
    `capacity` rows and a decode step (`models.source_build`); `prompt` is its reference prompt.

    keep/k_min/profile/selection are the shadowAttn pipeline's (`sat.pipeline`); the result's ``report`` lists
    the attention candidates (read from the compiled IR). `tune_logs`: a MetaSchedule database
    (`shadowattn tune`) whose records schedule the kernels they beat (`passes.ApplyTuningDatabase`).
    Raises ValueError for unknown models/devices/options or unusable tune logs, BuildDirError if
    `out_dir` is a non-empty directory that is not a previous build.
    """
    from .. import __version__  # lazily: the package root may import this module while it initialises

    start = time.perf_counter()
    device = get_device(device)
    built = model if isinstance(model, ModelBuild) else get_model(model, tokens, capacity=capacity, prompt=prompt)
    options = BuildOptions(keep=keep if profile is None else None, k_min=k_min, profile=profile,
                           tune_logs=None if tune_logs is None else str(tune_logs), selection=selection)
    out_dir = Path(out_dir).expanduser().absolute()
    with staging(out_dir) as tmp:
        npu = npu_lane.npu_options(built, options, tokens) if device.npu is not None else None
        ctx = BuildContext(device=device, model=built, options=options, out=tmp, log=log, npu=npu,
                           ir=shadowattn_ir(built.mod, device.cpu, options, npu))
        artifacts = reference.write_derived(tmp, built)
        for writer in writers:
            if writer.applies(device):
                artifacts += writer.write(ctx)
        report = attention_report(ctx.ir)
        data = manifest.write(tmp, {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"shadowattn_tvm": __version__, "tvm": tvm.__version__},
            "device": device.to_json(),
            "model": {"name": built.name, "tokens": tokens, "description": built.description,
                      "config": built.config,
                      **({"weights": built.weight_map.to_json()} if built.weight_map is not None else {})},
            "pipeline": options.to_json(),
            "entry": built.entry,
            **({"generation": {**built.generation.to_json(), "reference_prompt": list(built.reference_prompt)}}
               if built.generation is not None else {}),
            "inputs": [t.to_json() for t in built.inputs],
            "outputs": [t.to_json() for t in built.outputs],
            "report": {"summary": report.summary(), "rewritten": len(report.rewritten), "dense": len(report.dense)},
            "lanes": _lanes(device, ctx),
        }, artifacts)
    return BuildResult(out_dir=out_dir, manifest=data, report=report, seconds=time.perf_counter() - start)
