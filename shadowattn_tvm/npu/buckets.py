"""Scale buckets of the NPU pilot: the (λQ, λK) grid per layer, one static graph per cell and
shape, and the run-time selector that picks a cell for a launch.

An NPU graph bakes its int8 scales in, so the pilot is compiled for a small grid of scale pairs
around the calibrated ones (paper §4.2, default 3 × 3, step 0.5 σ):

    λQ values = centre_Q + {-1, 0, +1} · step · σ_Q      (same for K; clamped to > 0)

``GridCenter.LAYER`` (the default) centres every head of a layer on the layer mean of the
per-head calibrated scales and uses the pooled spread σ = sqrt(mean of the per-head variances),
so all heads of a launch share one λQ and one λK and the graphs are shared by all launches of
the layer. ``GridCenter.HEAD`` centres each head on its own calibrated mean and spread (the
graph then bakes one scale per fused head and is specific to its KV group).

At run time every head has its actual scale λ = absmax / 127. The paper picks a cell per head;
a fused static graph runs all heads of a launch with one cell, so `select_cell` picks the cell
minimising the MSE summed over the launch's heads:
``Σ_h (λQ_h − cellQ_h)² + Σ_h (λK − cellK)²`` (ties: lowest cell index).
"""
from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ..calibrate.profile import LayerProfile
from ..npu_abi import select_cell

#: Spread assumed when a profile has mean scales but no per-window spread (``q_scale_std`` is
#: None): 10 % of the mean, about what calibration windows of 256 tokens show on SmolLM2.
SYNTHETIC_SPREAD = 0.10


class GridCenter(str, enum.Enum):
    """What a bucket grid is centred on."""

    LAYER = "layer"  # layer mean of the per-head scales, pooled spread: one scale per launch
    HEAD = "head"  # each head's own calibrated mean and spread


class StatsSource(str, enum.Enum):
    PROFILE = "profile"  # calibrated SparsityProfile (q_scales/k_scales and their spreads)
    SAMPLES = "samples"  # absmax over sample windows (`ScaleStats.from_samples`)
    EXPLICIT = "explicit"


@dataclass(frozen=True)
class ScaleStats:
    """Per-head int8 scale statistics of one attention layer: mean and spread of absmax/127."""

    q_mean: tuple
    q_std: tuple
    k_mean: tuple
    k_std: tuple
    source: StatsSource = StatsSource.EXPLICIT

    def __post_init__(self):
        for name in ("q_mean", "q_std", "k_mean", "k_std"):
            value = tuple(float(x) for x in getattr(self, name))
            if not all(math.isfinite(x) and x >= 0 for x in value):
                raise ValueError(f"ScaleStats.{name} must be finite and >= 0, got {value[:4]}")
            object.__setattr__(self, name, value)
        if len(self.q_mean) != len(self.q_std) or len(self.k_mean) != len(self.k_std):
            raise ValueError("ScaleStats: one mean and one spread per head")
        if not all(x > 0 for x in self.q_mean + self.k_mean):
            raise ValueError("ScaleStats: mean scales must be > 0 (a scale is absmax / 127)")
        object.__setattr__(self, "source", StatsSource(self.source))

    @classmethod
    def from_profile(cls, layer: LayerProfile) -> "ScaleStats | None":
        """The calibrated statistics of a profile layer, or None if it has no scales. A spread that
        is missing or zero everywhere (one calibration window measures none) becomes SYNTHETIC_SPREAD
        of the mean: a grid of nine identical cells would bucket nothing."""
        if not layer.has_scales:
            return None
        spread = lambda std, mean: std if std and any(x > 0 for x in std) else tuple(SYNTHETIC_SPREAD * s for s in mean)  # noqa: E731
        q_std, k_std = spread(layer.q_scale_std, layer.q_scales), spread(layer.k_scale_std, layer.k_scales)
        return cls(layer.q_scales, q_std, layer.k_scales, k_std, StatsSource.PROFILE)

    @classmethod
    def from_samples(cls, q_windows, k_windows) -> "ScaleStats":
        """Calibrate on sample activations: each window is BHSD (or a list of BHSD arrays); the
        per-head absmax/127 of every window gives one sample of the scale."""
        def per_window(windows):
            arrays = [windows] if isinstance(windows, np.ndarray) and windows.ndim == 4 else list(windows)
            return np.stack([np.abs(np.asarray(w, np.float32)).max(axis=(0, 2, 3)) / 127.0 for w in arrays])

        q, k = per_window(q_windows), per_window(k_windows)
        q = np.where(q > 0, q, 1.0 / 127.0)
        k = np.where(k > 0, k, 1.0 / 127.0)
        return cls(q.mean(0), q.std(0), k.mean(0), k.std(0), StatsSource.SAMPLES)


@dataclass(frozen=True)
class GridOptions:
    """Shape of the scale grid: points per axis, step in units of σ, what it is centred on."""

    q_points: int = 3
    k_points: int = 3
    step: float = 0.5
    center: GridCenter = GridCenter.LAYER
    floor: float = 0.1  # a grid value is at least this fraction of its centre (keeps it > 0)

    def __post_init__(self):
        if self.q_points < 1 or self.k_points < 1:
            raise ValueError(f"grid points must be >= 1, got {self.q_points} x {self.k_points}")
        if not (self.step >= 0 and math.isfinite(self.step)):
            raise ValueError(f"grid step must be finite and >= 0, got {self.step}")
        if not 0 < self.floor <= 1:
            raise ValueError(f"grid floor must be in (0, 1], got {self.floor}")
        object.__setattr__(self, "center", GridCenter(self.center))

    def offsets(self, points: int) -> tuple:
        """Offsets in units of σ, symmetric around 0: 3 points -> (-step, 0, +step)."""
        return tuple((i - (points - 1) / 2) * self.step for i in range(points))


@dataclass(frozen=True)
class BucketGrid:
    """The (λQ, λK) cells of one layer: per cell, a scale per query head and per KV head."""

    layer: int
    q_scales: tuple  # [cells][num_heads]
    k_scales: tuple  # [cells][num_kv_heads]
    offsets: tuple = field(default=())  # [cells] (q offset, k offset) in units of σ

    @classmethod
    def build(cls, layer: int, stats: ScaleStats, options: GridOptions = GridOptions()) -> "BucketGrid":
        def axis(mean, std, points):
            mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
            if options.center == GridCenter.LAYER:
                centre = np.full_like(mean, mean.mean())
                spread = np.full_like(std, math.sqrt(float(np.mean(std ** 2))))
            else:
                centre, spread = mean, std
            return [np.maximum(centre + off * spread, options.floor * centre).astype(np.float32)
                    for off in options.offsets(points)]

        qs = axis(stats.q_mean, stats.q_std, options.q_points)
        ks = axis(stats.k_mean, stats.k_std, options.k_points)
        q_off, k_off = options.offsets(options.q_points), options.offsets(options.k_points)
        cells = list(itertools.product(range(len(qs)), range(len(ks))))
        return cls(
            layer=layer,
            q_scales=tuple(tuple(float(x) for x in qs[i]) for i, _ in cells),
            k_scales=tuple(tuple(float(x) for x in ks[j]) for _, j in cells),
            offsets=tuple((q_off[i], k_off[j]) for i, j in cells),
        )

    @property
    def num_cells(self) -> int:
        return len(self.q_scales)

    def cell_table(self, heads, kv_head: int) -> np.ndarray:
        """[cells, len(heads) + 1] float32: the launch's per-head λQ, then its λK (what the NPU
        lane selects on and what top-k reads back)."""
        heads = list(heads)
        return np.asarray([[self.q_scales[c][h] for h in heads] + [self.k_scales[c][kv_head]]
                           for c in range(self.num_cells)], np.float32)


@dataclass(frozen=True)
class BucketSpec:
    """One static NPU graph: shape (fused heads, query rows, KV length, head_dim) and the scales
    baked in: λQ per fused head, one λK for the KV head they share. Built by
    `ops.npu_graph.bucket_graph`."""

    fused: int
    q_rows: int
    kv_len: int
    head_dim: int
    q_scales: tuple
    k_scale: float
    dtype: str = "float32"

    def prim_func(self):
        from ..ops.npu_graph import bucket_graph

        return bucket_graph(self.fused, self.q_rows, self.kv_len, self.head_dim,
                            self.q_scales, self.k_scale, self.dtype)

    @property
    def macs(self) -> int:
        return self.fused * self.q_rows * self.kv_len * self.head_dim

    @property
    def io_bytes(self) -> int:
        """Bytes in and out of one launch: float Q of every fused head, K once, int32 scores."""
        item = np.dtype(self.dtype).itemsize
        inputs = (self.fused * self.q_rows + self.kv_len) * self.head_dim * item
        return inputs + self.fused * self.q_rows * self.kv_len * 4

    def name(self, layer: int, cell: int, group: int | None = None) -> str:
        shared = "" if group is None else f"_g{group}"
        return f"sat_npu_L{layer}{shared}_f{self.fused}_q{self.q_rows}_kv{self.kv_len}_c{cell}"


__all__ = ["GridCenter", "StatsSource", "ScaleStats", "GridOptions", "BucketGrid", "BucketSpec", "select_cell",
           "SYNTHETIC_SPREAD"]
