"""The NPU lane of a build: every pilot an NPU launch, its graphs a Hexagon library, its plan a file.

When the device has an NPU, the CPU module is compiled with the NPU phases (`npu_options`):

    npu/graphs_<arch>.so    every bucket graph of the build, compiled by TVM's Hexagon codegen
    npu/manifest.json       per graph: symbol, shapes, dtypes, baked-in scales (`targets.hexagon`)
    plan.json               per layer: launch order, predicted NPU/CPU lane times per launch,
                            where the costs came from (a labelled device model, not measurements)

Both are read from the compiled IR (`ir_attrs`), never from pass objects.
"""
from __future__ import annotations

import json

from ..ir_attrs import layer_plans, npu_graphs
from ..npu.costs import DeviceCostModel
from ..npu.options import DEFAULT_KV_BUCKETS, NPUOptions
from .manifest import Artifact

DIRECTORY = "npu"
PLAN = "plan.json"


def kv_buckets(tokens: int) -> tuple:
    """The default ladder plus the build's own length, so a short prompt is not padded to 256 keys."""
    return tuple(sorted(set(DEFAULT_KV_BUCKETS) | {int(tokens)}))


def npu_options(model, options, tokens: int) -> NPUOptions:
    """Phases 3-4 options of a device build: scale statistics from the profile's calibrated scales,
    else from the model's own sample activations (`ModelBuild.npu_stats`); ValueError if neither."""
    profile = options.profile
    calibrated = profile is not None and profile.layers and all(layer.has_scales for layer in profile.layers)
    stats = None
    if not calibrated:
        if model.npu_stats is None:
            raise ValueError(f"the NPU pilot of {model.name} needs calibrated Q/K scales: run `shadowattn calibrate` "
                             "and pass its profile with --profile (or compile for a device without an NPU)")
        stats = model.npu_stats()
    keep = options.keep if options.keep is not None else profile.keep
    return NPUOptions(kv_buckets=kv_buckets(tokens), stats=stats, costs=DeviceCostModel(keep=keep))


def write_library(ir, device, out, log) -> list:
    """npu/: the Hexagon graph library of every graph in `ir`, for the device's NPU arch."""
    from ..ops.npu_graph import bucket_graph
    from ..targets.hexagon.library import arch_of, build_graph_library

    graphs = {name: bucket_graph(**params) for name, params in npu_graphs(ir).items()}
    arch = arch_of(device.npu)
    log(f"[compile] npu: {len(graphs)} bucket graphs for Hexagon {arch.value}")
    lib = build_graph_library(graphs, arch, out / DIRECTORY)
    files = sorted(p.relative_to(out).as_posix() for p in (out / DIRECTORY).rglob("*") if p.is_file())
    kinds = {lib.library_path.relative_to(out).as_posix(): "npu-library",
             lib.manifest_path.relative_to(out).as_posix(): "npu-manifest"}
    return [Artifact(f, kinds.get(f, "npu-object"), "npu") for f in files]


def write_plan(ir, device, out) -> list:
    plans = layer_plans(ir)
    data = {"device": device.name, "npu": str(device.npu.attrs.get("mcpu", "")),
            "launches": sum(len(p.order) for p in plans),
            "cost_source": sorted({p.cost_label for p in plans}),
            "layers": [p.to_json() for p in plans]}
    (out / PLAN).write_text(json.dumps(data, indent=1) + "\n")
    return [Artifact(PLAN, "npu-plan")]


__all__ = ["npu_options", "kv_buckets", "write_library", "write_plan", "DIRECTORY", "PLAN"]
