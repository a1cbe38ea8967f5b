"""The NPU lane's compile-time side: scale bucket grids, launch units, host kernels, cost tables.

The passes that use them are `passes.BucketPilot` (phase 3) and `passes.PipelineHeads` (phase 4);
the run-time side is `runtime.lanes` and `runtime.trace`.
"""
from .buckets import BucketGrid, BucketSpec, GridCenter, GridOptions, ScaleStats, StatsSource, select_cell
from .costs import CostSource, CostTable, DeviceCostModel, GivenCosts, HostProfiledCosts, UnitCost
from .options import DEFAULT_KV_BUCKETS, NPUOptions
from .units import KVBucketError, LaunchUnit, plan_units

__all__ = ["BucketGrid", "BucketSpec", "GridCenter", "GridOptions", "ScaleStats", "StatsSource", "select_cell",
           "CostSource", "CostTable", "DeviceCostModel", "GivenCosts", "HostProfiledCosts", "UnitCost",
           "NPUOptions", "DEFAULT_KV_BUCKETS", "KVBucketError", "LaunchUnit", "plan_units"]
