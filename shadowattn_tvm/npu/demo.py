"""`run_pipelined_demo`: the NPU/CPU head pipeline on the embedded default block, on this host.

The block is the one of `shadowattn demo` (Qwen2-0.5B shape: 14 query heads, 2 KV heads,
head_dim 64, causal). The bucket grid comes from a calibration run: absmax over windows of
256 tokens of sample activations drawn like the demo's (another seed). The program compiled with
``sat.pipeline(npu=NPUOptions(...))`` runs twice, with a SERIAL lane (one core) and a PIPELINED
lane (NPU lane worker on a second core): the outputs must be bit-identical and equal the numpy
reference built with the bucket scales the launches chose. Optionally writes a Chrome trace.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .._compat import relax, tvm
from ..demo import DEFAULT_SPEC, key_value_table
from ..ir_attrs import layer_plans, npu_graphs
from ..demo import _inputs as demo_inputs  # the demo's activations: same data as `shadowattn demo`
from ..ops import reference
from ..testing import AttentionSpec, attention_module, sparse_reference
from .buckets import BucketGrid, ScaleStats
from .costs import HostProfiledCosts
from .options import NPUOptions
from .reference import bucket_scales

CALIBRATION_WINDOW = 256


def host_target():
    """The host CPU with its vector ISA (without mcpu LLVM emits SSE2-only code)."""
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2})


def calibration_stats(spec: AttentionSpec, seed: int = 1, windows: int = 4) -> ScaleStats:
    """Scale statistics from sample activations (the synthetic statistics when no profile exists)."""
    sample = replace(spec, q_len=CALIBRATION_WINDOW * windows)
    q, k, _ = (x.transpose(0, 2, 1, 3) for x in demo_inputs(sample, seed))
    cut = lambda x: [x[:, :, i * CALIBRATION_WINDOW:(i + 1) * CALIBRATION_WINDOW] for i in range(windows)]  # noqa: E731
    return ScaleStats.from_samples(cut(q), cut(k))


@dataclass(frozen=True)
class PipelinedBuild:
    executable: object
    options: NPUOptions
    graphs: dict  # ir_attrs.npu_graphs: name -> bucket parameters
    plans: tuple  # ir_attrs.LayerPlan


def build_pipelined(spec: AttentionSpec, keep: float, k_min: int, stats: ScaleStats, kv_step: int = 256,
                    costs=None, target=None) -> PipelinedBuild:
    from ..passes import lowering, pipeline

    target = target or host_target()
    ladder = tuple(range(kv_step, max(4096, spec.kv_length) + 1, kv_step))
    options = NPUOptions(kv_buckets=ladder, stats=stats, costs=costs or HostProfiledCosts(target=target))
    with target:
        mod = pipeline(keep=keep, k_min=k_min, npu=options, lower=False)(attention_module(spec))
    ex = tvm.compile(mod, target=target, relax_pipeline=lowering())
    return PipelinedBuild(ex, options, npu_graphs(mod), tuple(layer_plans(mod)))


@dataclass
class PipelinedDemoResult:
    tokens: int
    keep: float
    launches: int
    graphs: int
    cells: list
    identical: bool
    max_err_vs_reference: float
    recall: float
    serial_ms: float
    pipelined_ms: float
    planner_ms: float
    cost_source: str
    trace: str | None

    def table(self) -> str:
        rows = [
            ("NPU launches per block / bucket graphs built", f"{self.launches} / {self.graphs}"),
            ("grid cell chosen per KV group", ", ".join(map(str, self.cells))),
            ("pipelined output == serial output", "bit-identical" if self.identical else "DIFFERENT"),
            ("output vs numpy reference (bucket scales, max abs)", f"{self.max_err_vs_reference:.2e}"),
            ("top-k recall, bucketed INT8 pilot vs float Q·Kᵀ", f"{100 * self.recall:.2f} %"),
            ("host latency, serial schedule (one lane, one core)", f"{self.serial_ms:.1f} ms"),
            ("host latency, pipelined (NPU lane + CPU lane)",
             f"{self.pipelined_ms:.1f} ms  ({self.pipelined_ms / self.serial_ms:.2f}x of serial)"),
            ("planner time per layer", f"{self.planner_ms * 1e3:.0f} µs ({self.cost_source} costs)"),
        ]
        if self.trace:
            rows.append(("Chrome trace (open in ui.perfetto.dev)", self.trace))
        return key_value_table(f"shadowAttn NPU/CPU pipeline: Qwen2-0.5B-shaped block, {self.tokens} tokens, "
                               f"keep {self.keep}, host twins", rows)


def run_pipelined_demo(tokens: int = 1024, keep: float = 0.2, k_min: int = 16, repeat: int = 3, seed: int = 0,
                       trace: str | Path | None = None, kv_step: int = 256, costs=None) -> PipelinedDemoResult:
    """Compile, check and time the pipelined block (see the module docstring); `trace` is a path
    for a Chrome trace of one pipelined run; `costs` defaults to host-profiled launch costs."""
    from ..runtime.lanes import LaneMode, LaneOptions, NPULane
    from ..runtime.trace import Tracer

    spec = replace(DEFAULT_SPEC, q_len=tokens)
    stats = calibration_stats(spec)
    build = build_pipelined(spec, keep, k_min, stats, kv_step=kv_step, costs=costs)
    inputs = demo_inputs(spec, seed)
    vm = relax.VirtualMachine(build.executable, tvm.cpu())
    args = [tvm.runtime.tensor(x) for x in inputs]
    lanes = {mode: NPULane(LaneOptions(mode=mode)) for mode in LaneMode}
    outs, best = {}, {mode: float("inf") for mode in LaneMode}
    for _ in range(max(1, repeat)):
        for mode, lane in lanes.items():
            with lane:
                start = time.perf_counter()
                outs[mode] = vm["main"](*args).numpy()
                best[mode] = min(best[mode], time.perf_counter() - start)
    if trace is not None:
        tracer = Tracer(f"shadowattn attention block, {tokens} tokens (pipelined)")
        with NPULane(LaneOptions(mode=LaneMode.PIPELINED), tracer=tracer), tracer.instrument(vm):
            vm["main"](*args)
        trace = str(tracer.save(trace))

    block = spec.block()
    q, k = (x.transpose(0, 2, 1, 3) for x in inputs[:2])
    grid = BucketGrid.build(block.layer, stats, build.options.grid)
    q_scales, k_scales, cells = bucket_scales(block, grid, q, k)
    expected, idx, _ = sparse_reference(spec, inputs, [keep] * spec.heads, k_min, q_scales=q_scales, k_scales=k_scales)
    logits = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k[:, reference.kv_index(block)].astype(np.float64))
    recall = reference.topk_recall(logits, idx, reference.visible(block, tokens, tokens))
    plan = build.plans[0]
    return PipelinedDemoResult(
        tokens=tokens, keep=keep, launches=len(plan.order), graphs=len(build.graphs), cells=cells,
        identical=bool(np.array_equal(outs[LaneMode.SERIAL], outs[LaneMode.PIPELINED])),
        max_err_vs_reference=float(np.abs(outs[LaneMode.PIPELINED] - expected).max()), recall=recall,
        serial_ms=best[LaneMode.SERIAL] * 1e3, pipelined_ms=best[LaneMode.PIPELINED] * 1e3,
        planner_ms=plan.planner_ms, cost_source=plan.cost_source, trace=trace,
    )


__all__ = ["run_pipelined_demo", "PipelinedDemoResult", "build_pipelined", "calibration_stats", "host_target",
           "DEFAULT_SPEC", "demo_inputs"]
