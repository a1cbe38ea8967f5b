"""Cost tables for the launch planner: NPU-lane and CPU-lane time of every launch unit.

`PipelineHeads` orders launches from these (Johnson's rule, `npu.planner`). Each model is a
frozen dataclass with ``table(units, block, selection) -> CostTable`` (selection: "head", a top-k
per query head, or "group", one per KV group, as the block was split); the table says where it
came from:

* `HostProfiledCosts`: for host runs. Builds the units' kernels for the host (stage + host twin
  of the graph for the NPU lane; top-k + sparse attention for the CPU lane), runs them on
  synthetic activations with one thread and keeps the best of `repeat` (one timing per distinct
  unit shape; units of other KV groups and batch rows share it), the group kernels for a group
  selection.
* `DeviceCostModel`: for phones. An analytic model from assumed rates, labelled as such: it is
  not a measurement. It models per-head selection (for a group selection, an upper bound).
* `GivenCosts`: fixed numbers (tests, or a table measured elsewhere).
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..block import AttentionBlock, CausalMode, KVMap
from .units import LaunchUnit


class CostSource(str, enum.Enum):
    HOST_PROFILED = "host-profiled"
    DEVICE_MODEL = "device-cost-model"
    GIVEN = "given"


@dataclass(frozen=True)
class UnitCost:
    key: str
    npu_ms: float
    cpu_ms: float


@dataclass(frozen=True)
class CostTable:
    source: CostSource
    label: str
    costs: tuple  # UnitCost per launch unit

    def by_key(self) -> dict:
        return {c.key: c for c in self.costs}


@dataclass(frozen=True)
class GivenCosts:
    """The same (npu_ms, cpu_ms) for every unit, or per unit key via `per_key`."""

    npu_ms: float = 1.0
    cpu_ms: float = 1.0
    per_key: tuple = ()  # ((key, npu_ms, cpu_ms), ...)
    label: str = "given costs"

    def table(self, units, block: AttentionBlock, selection: str = "head") -> CostTable:
        fixed = {k: (n, c) for k, n, c in self.per_key}
        return CostTable(CostSource.GIVEN, self.label,
                         tuple(UnitCost(u.key, *fixed.get(u.key, (self.npu_ms, self.cpu_ms))) for u in units))


@dataclass(frozen=True)
class DeviceCostModel:
    """Analytic per-launch times from assumed device rates (NOT measurements).

    NPU: launch overhead + MACs of the graph / int8 rate. CPU: top-k reads each visible score
    about `topk_passes` times at `cpu_gbps`; sparse attention does 4·D flops per kept key at
    `cpu_gflops`.
    """

    label: str = "device cost model (assumed rates, not measured)"
    npu_gmacs: float = 500.0
    npu_launch_us: float = 150.0
    cpu_gbps: float = 8.0
    cpu_gflops: float = 20.0
    topk_passes: float = 6.0
    keep: float = 0.2

    def table(self, units, block: AttentionBlock, selection: str = "head") -> CostTable:
        costs = []
        for u in units:
            macs = u.fused * u.q_rows * u.kv_len * block.head_dim
            visible = _visible_pairs(u, block)
            kept = max(self.keep * visible, 1.0)
            npu = self.npu_launch_us / 1e3 + macs / (self.npu_gmacs * 1e6)
            topk = visible * 4 * self.topk_passes / (self.cpu_gbps * 1e6)
            cpu = topk + kept * 4 * block.head_dim / (self.cpu_gflops * 1e6)
            costs.append(UnitCost(u.key, npu, cpu))
        return CostTable(CostSource.DEVICE_MODEL, self.label, tuple(costs))


def _visible_pairs(u: LaunchUnit, block: AttentionBlock) -> float:
    if block.causal == CausalMode.NONE:
        return float(u.fused * u.rows * u.kv_valid)
    first = u.kv_len - u.q_rows + 1  # keys visible to the chunk's first row
    return float(u.fused * u.q_rows * (first + (u.q_rows - 1) / 2))


@dataclass(frozen=True)
class HostProfiledCosts:
    """Time the units' host kernels here, one thread, best of `repeat` (see module docstring)."""

    repeat: int = 3
    seed: int = 0
    target: object = field(default=None, compare=False)  # tvm Target; None: current, else host + mcpu

    def table(self, units, block: AttentionBlock, selection: str = "head") -> CostTable:
        from ..runtime.lanes import single_thread

        kernels = _HostKernels(block, self._target(), selection == "group")
        shapes = {}
        with single_thread():
            for u in units:
                if _shape(u) not in shapes:
                    shapes[_shape(u)] = kernels.time(u, self.repeat, self.seed)
        label = (f"host-profiled on {kernels.target.attrs.get('mcpu', 'generic')} (1 thread, best of {self.repeat}, "
                 f"{selection} selection)")
        return CostTable(CostSource.HOST_PROFILED, label, tuple(
            UnitCost(u.key, *shapes[_shape(u)]) for u in units))

    def _target(self):
        from .._compat import tvm

        if self.target is not None:
            return self.target
        current = tvm.target.Target.current(allow_none=True)
        if current is not None and current.kind.name == "llvm":
            return current
        return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


def _shape(unit) -> tuple:
    """What a unit's kernel times depend on (units of other KV groups and batch rows share it)."""
    return unit.fused, unit.q_rows, unit.kv_len, unit.rows, unit.kv_valid, unit.top_k


class _HostKernels:
    """Builds (once per shape) and times the kernels of one unit shape: a top-k per head, or one
    for the unit's KV group (`group`, with the group sparse kernel, as the split emits them)."""

    def __init__(self, block: AttentionBlock, target, group: bool = False):
        from ..targets.lanes import lane_for
        from ..ops import sparse_attention as sparse_ops
        from ..ops import topk as topk_ops
        from ..ops import topk_group
        from .kernels import stage_inputs

        self.block, self.target, self.group = block, target, group
        causal = CausalMode.NONE if block.causal == CausalMode.NONE else CausalMode.BOTTOM_RIGHT
        self.unit_block = replace(block, num_heads=block.group, num_kv_heads=1, kv_map=KVMap.INTERLEAVE,
                                  has_mask=False, causal=causal)
        sched = lane_for(target).kernels()
        d = block.head_dim
        self.stage = self._build(stage_inputs(block.dtype, d))
        from .._compat import tirx

        sym = [tirx.Var(n, "int64") for n in ("b", "h", "s")]
        topk = topk_group.topk_group_indices if group else topk_ops.topk_indices
        sparse = sparse_ops.sparse_attention_group if group else sparse_ops.sparse_attention
        self.topk = self._build(topk(self.unit_block, 1))
        self.sparse = self._build(sched.schedule_sparse_attention(
            sparse(self.unit_block, sym + [d], tirx.Var("n", "int64"), d, tirx.Var("t", "int64"))))

    def _build(self, func):
        from .._compat import tvm

        return tvm.compile(func.with_attr("global_symbol", "main"), target=self.target)

    def time(self, u: LaunchUnit, repeat: int, seed: int):
        from .._compat import tvm
        from .buckets import BucketSpec
        from .kernels import host_twin

        d, dtype, dev = self.block.head_dim, self.block.dtype, tvm.cpu()
        rng = np.random.default_rng(seed)
        spec = BucketSpec(u.fused, u.q_rows, u.kv_len, d, (3.0 / 127,) * u.fused, 3.0 / 127, dtype)
        twin = tvm.compile(host_twin(spec).with_attr("global_symbol", "main"), target=self.target)
        tensor = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), dev)  # noqa: E731
        q = tensor(rng.standard_normal((1, u.fused, u.row0 + u.rows, d)).astype(dtype))
        k = tensor(rng.standard_normal((1, 1, u.kv_valid, d)).astype(dtype))
        qb = tvm.runtime.empty((u.fused, u.q_rows, d), dtype, dev)
        kb = tvm.runtime.empty((u.kv_len, d), dtype, dev)
        scores = tvm.runtime.empty((1, u.fused, u.q_rows, u.kv_len), "int32", dev)
        scores3 = scores._create_view((u.fused, u.q_rows, u.kv_len))
        heads = 1 if self.group else u.fused  # selections: one per KV group, or per head
        ratio = tensor(np.full(heads, u.top_k / u.kv_len))  # the unit's budget: k = top_k (k_min 1)
        idx = tvm.runtime.empty((1, heads, u.q_rows, u.top_k), "int32", dev)
        # the group top-k also reads the heads' and the KV head's scales (it compares heads' logits)
        scales = (tensor(np.full(u.fused, 3.0 / 127, np.float32)), tensor(np.full(1, 3.0 / 127, np.float32))) \
            if self.group else ()
        qu = tensor(rng.standard_normal((1, u.fused, u.q_rows, d)).astype(dtype))
        kv = tensor(rng.standard_normal((1, 1, u.kv_len, d)).astype(dtype))
        out = tvm.runtime.empty((1, u.fused, u.q_rows, d), dtype, dev)

        def npu():
            self.stage(q, k, qb, kb, 0, 0, 1, 0, u.row0, u.rows, u.kv_valid)
            twin(qb, kb, scores3)

        def cpu():
            self.topk(scores, ratio, *scales, idx)
            self.sparse(qu, kv, kv, idx, out)

        return _best_ms(npu, repeat), _best_ms(cpu, repeat)


def _best_ms(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


__all__ = ["CostSource", "UnitCost", "CostTable", "GivenCosts", "DeviceCostModel", "HostProfiledCosts"]
