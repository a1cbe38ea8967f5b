"""What the NPU phases leave in the IR, and the typed readers the builder uses to get it back.

The passes write these attributes; nothing reads pass objects after a run. Keys:

* ``shadowattn.plan`` on each NPU block function (`PipelineHeads`): a JSON string, see `LayerPlan`;
* ``shadowattn.bucket`` on each NPU graph's host twin (`BucketPilot`, `ops.npu_graph.BUCKET_ATTR`):
  the bucket graph's shape and scales, from which the NPU library rebuilds the same graph.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

PLAN = "shadowattn.plan"
BUCKET = "shadowattn.bucket"  # ops.npu_graph.BUCKET_ATTR


@dataclass(frozen=True)
class UnitPlan:
    key: str
    npu_ms: float  # predicted NPU lane time of the launch (stage + graph)
    cpu_ms: float  # predicted CPU lane time of its top-k + sparse attention


@dataclass(frozen=True)
class LayerPlan:
    """The launch order of one NPU block and what the planner expected of it."""

    layer: int
    function: str
    order: tuple  # unit keys, in launch order
    units: tuple  # UnitPlan per launch, in launch order
    makespan_ms: float  # two lanes, by the cost table
    serial_ms: float  # one lane, by the cost table
    planner_ms: float  # time to order the launches
    cost_source: str  # npu.costs.CostSource value
    cost_label: str  # where the costs came from, in words

    def to_json(self) -> dict:
        data = asdict(self)
        data["order"], data["units"] = list(self.order), [asdict(u) for u in self.units]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "LayerPlan":
        return cls(**{**data, "order": tuple(data["order"]), "units": tuple(UnitPlan(**u) for u in data["units"])})


def plan_attr(plan: LayerPlan) -> str:
    return json.dumps(plan.to_json(), sort_keys=True)


def layer_plans(mod) -> list:
    """Every `LayerPlan` in `mod` (a Relax IRModule after PipelineHeads), by layer."""
    plans = []
    for gv, func in mod.functions.items():
        attrs = getattr(func, "attrs", None)
        if attrs is not None and PLAN in attrs:
            plan = LayerPlan.from_json(json.loads(str(attrs[PLAN])))
            plans.append(LayerPlan(**{**plan.__dict__, "function": gv.name_hint}))
    return sorted(plans, key=lambda p: p.layer)


def npu_graphs(mod) -> dict:
    """{graph name: `ops.npu_graph.bucket_graph` keyword arguments} of every NPU graph in `mod`
    (the host twins BucketPilot adds), by name."""
    from .ops.npu_graph import bucket_params

    return {gv.name_hint: bucket_params(func) for gv, func in sorted(mod.functions.items(), key=lambda i: i[0].name_hint)
            if getattr(func, "attrs", None) is not None and BUCKET in func.attrs}


__all__ = ["PLAN", "BUCKET", "UnitPlan", "LayerPlan", "plan_attr", "layer_plans", "npu_graphs"]
