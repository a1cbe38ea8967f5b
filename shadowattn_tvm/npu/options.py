"""`NPUOptions`: everything phases 3 (BucketPilot) and 4 (PipelineHeads) are configured by.

Frozen and hashable, so it can key a build cache. Pass it as ``sat.pipeline(..., npu=NPUOptions())``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .buckets import GridOptions, ScaleStats
from .costs import DeviceCostModel, GivenCosts, HostProfiledCosts

#: Default KV length buckets: every 256 keys up to 4096 (see `npu.units` for why chunks of a
#: causal block end on the ladder; a geometric ladder like (512, 1024, 2048, 4096) also works,
#: with fewer graphs and longer chunks).
DEFAULT_KV_BUCKETS = tuple(range(256, 4097, 256))


@dataclass(frozen=True)
class NPUOptions:
    """Bucket grid, shape buckets, scale statistics and the planner's cost model.

    grid: the (λQ, λK) grid (3 x 3, step 0.5 σ, centred on the layer mean by default).
    kv_buckets: KV lengths the NPU graphs are built for; K is zero-padded up to one. A block
        whose KV length exceeds the largest is a compile-time `KVBucketError`.
    q_chunk: query rows per launch of a non-causal block (causal chunks follow kv_buckets).
    stats: scale statistics per layer (one entry: every layer). When None, each layer's come
        from the profile's calibrated q/k scales; without those either, compilation fails and
        says how to provide them (`ScaleStats.from_samples`).
    costs: the planner's cost model: `HostProfiledCosts()` for host runs, `DeviceCostModel()`
        for phones (labelled as a model), `GivenCosts(...)` for fixed numbers.
    """

    grid: GridOptions = GridOptions()
    kv_buckets: tuple = DEFAULT_KV_BUCKETS
    q_chunk: int = 256
    stats: tuple | None = None
    costs: HostProfiledCosts | DeviceCostModel | GivenCosts = field(default_factory=HostProfiledCosts)

    def __post_init__(self):
        buckets = tuple(sorted(set(int(b) for b in self.kv_buckets)))
        if not buckets or buckets[0] < 1:
            raise ValueError(f"kv_buckets must be positive lengths, got {self.kv_buckets}")
        object.__setattr__(self, "kv_buckets", buckets)
        if int(self.q_chunk) < 1:
            raise ValueError(f"q_chunk must be >= 1, got {self.q_chunk}")
        if self.stats is not None:
            stats = (self.stats,) if isinstance(self.stats, ScaleStats) else tuple(self.stats)
            if not stats or not all(isinstance(s, ScaleStats) for s in stats):
                raise TypeError("NPUOptions.stats must be ScaleStats or a tuple of them (one per layer)")
            object.__setattr__(self, "stats", stats)

    def layer_stats(self, layer: int) -> ScaleStats | None:
        if self.stats is None:
            return None
        if len(self.stats) == 1:
            return self.stats[0]
        if layer >= len(self.stats):
            raise ValueError(f"NPUOptions.stats covers {len(self.stats)} layers, the model has layer {layer}")
        return self.stats[layer]


__all__ = ["NPUOptions", "DEFAULT_KV_BUCKETS"]
