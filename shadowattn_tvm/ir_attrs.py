"""What the passes leave in the IR, and the typed readers the builder uses to get it back.

The passes write these attributes; nothing reads pass objects after a run. Keys:

* ``shadowattn.report`` on the module (`DetectAttention`, `SplitSparseAttention`): every attention
  candidate, rewritten or dense and why (`report.AttentionReport`);
* ``shadowattn.blocks`` on the module (`SplitSparseAttention`): every block it split, with its
  q/k/v(/mask) shapes (`SplitBlock`), so a lane emitting its own kernels (Adreno) describes
  exactly the blocks the CPU module rewrote;
* ``shadowattn.tuning`` on the module (`UseTunableKernels`, then `ApplyTuningDatabase` in the
  lowering): what a tuning database scheduled (`TuningChoices`);
* ``shadowattn.plan`` on each NPU block function (`PipelineHeads`): a JSON string, see `LayerPlan`;
* ``shadowattn.bucket`` on each NPU graph's host twin (`BucketPilot`, `ops.npu_graph.BUCKET_ATTR`):
  the bucket graph's shape and scales, from which the NPU library rebuilds the same graph.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .block import AttentionBlock
from .report import AttentionReport

REPORT = "shadowattn.report"
BLOCKS = "shadowattn.blocks"
TUNING = "shadowattn.tuning"
PLAN = "shadowattn.plan"
BUCKET = "shadowattn.bucket"  # ops.npu_graph.BUCKET_ATTR


def _module_json(mod, key: str):
    attrs = getattr(mod, "attrs", None)
    return json.loads(str(attrs[key])) if attrs is not None and key in attrs else None


def _with_module_json(mod, key: str, data):
    return mod.with_attr(key, json.dumps(data, sort_keys=True))


def attention_report(mod) -> AttentionReport:
    """The report `DetectAttention` left in `mod` (empty if no detection ran)."""
    data = _module_json(mod, REPORT)
    return AttentionReport() if data is None else AttentionReport.from_json(data)


def with_report(mod, report: AttentionReport):
    return _with_module_json(mod, REPORT, report.to_json())


def _dims(ty) -> tuple:
    """A tensor type's shape: ints where static, the expression's text where symbolic."""
    return tuple(int(d.value) if hasattr(d, "value") else str(d) for d in ty.shape.values)


@dataclass(frozen=True)
class SplitBlock:
    """One block `SplitSparseAttention` split, with the shapes of its q, k, v (and mask)."""

    block: AttentionBlock
    q: tuple
    k: tuple
    v: tuple
    mask: tuple | None = None
    selection: str = "head"  # "group": one top-k per KV head and row

    @classmethod
    def of(cls, block: AttentionBlock, q_ty, k_ty, v_ty, mask_ty=None, selection: str = "head") -> "SplitBlock":
        return cls(block, _dims(q_ty), _dims(k_ty), _dims(v_ty), None if mask_ty is None else _dims(mask_ty),
                   selection)

    def to_json(self) -> dict:
        return {"block": self.block.to_attrs(), "q": list(self.q), "k": list(self.k), "v": list(self.v),
                "mask": None if self.mask is None else list(self.mask), "selection": self.selection}

    @classmethod
    def from_json(cls, data: dict) -> "SplitBlock":
        return cls(AttentionBlock.from_attrs(data["block"]), tuple(data["q"]), tuple(data["k"]), tuple(data["v"]),
                   None if data["mask"] is None else tuple(data["mask"]), data.get("selection", "head"))


def split_blocks(mod) -> list:
    """Every `SplitBlock` in `mod`, by layer."""
    return sorted((SplitBlock.from_json(d) for d in _module_json(mod, BLOCKS) or []), key=lambda b: b.block.layer)


def with_split_blocks(mod, blocks: list):
    return _with_module_json(mod, BLOCKS, [b.to_json() for b in sorted(blocks, key=lambda b: b.block.layer)])


@dataclass(frozen=True)
class Choice:
    """What compile does with one kernel that the tuning database has a record for."""

    name: str
    tuned_ms: float
    shipped_ms: float | None  # None: no baseline measured for this workload

    @property
    def use_tuned(self) -> bool:
        return self.shipped_ms is None or self.tuned_ms < self.shipped_ms

    def describe(self) -> str:
        shipped = "no baseline" if self.shipped_ms is None else f"shipped {self.shipped_ms:.3f} ms"
        verdict = "tuned" if self.use_tuned else "shipped kept"
        return f"{self.name}: {verdict} (record {self.tuned_ms:.3f} ms, {shipped})"


@dataclass(frozen=True)
class TuningChoices:
    """Every kernel a database had a record for and what was done, and how many were tunable."""

    choices: tuple = ()
    tunable: int = 0

    def __add__(self, other: "TuningChoices") -> "TuningChoices":
        return TuningChoices(self.choices + other.choices, self.tunable + other.tunable)

    def to_json(self) -> dict:
        return {"choices": [asdict(c) for c in self.choices], "tunable": self.tunable}

    @classmethod
    def from_json(cls, data: dict) -> "TuningChoices":
        return cls(tuple(Choice(**c) for c in data["choices"]), data["tunable"])


def tuning_choices(mod) -> TuningChoices | None:
    """What a tuning database did to `mod` (None: no database was applied)."""
    data = _module_json(mod, TUNING)
    return None if data is None else TuningChoices.from_json(data)


def with_tuning(mod, choices: TuningChoices):
    return _with_module_json(mod, TUNING, choices.to_json())


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


__all__ = ["REPORT", "BLOCKS", "TUNING", "PLAN", "BUCKET", "AttentionReport", "SplitBlock", "Choice", "TuningChoices",
           "UnitPlan", "LayerPlan", "attention_report", "with_report", "split_blocks", "with_split_blocks",
           "tuning_choices", "with_tuning", "plan_attr", "layer_plans", "npu_graphs"]
