"""`BuildOptions`: everything besides the device and model that decides what a build contains."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .._compat import tvm
from ..calibrate.profile import SparsityProfile, check_keep
from ..npu.options import NPUOptions
from ..ir_attrs import tuning_choices
from ..passes import lowering, pipeline
from ..passes.split_sparse_attention import check_selection
from ..tuning.database import TuneLogsError, TuningDatabase, open_database


@dataclass(frozen=True)
class BuildOptions:
    keep: float | None = 0.2  # None: take the ratio from `profile`
    k_min: int = 16
    profile: SparsityProfile | None = None
    tune_logs: str | None = None  # MetaSchedule database directory (`shadowattn tune`); None: shipped kernels
    selection: str = "head"  # "group": one top-k per KV head (`pipeline(selection=...)`)

    def __post_init__(self):
        if self.keep is None and self.profile is None:
            raise ValueError("give keep=<ratio in (0, 1]> or a calibration profile")
        if self.keep is not None:
            check_keep(self.keep)
        if self.k_min < 1:
            raise ValueError(f"k_min must be >= 1, got {self.k_min}")
        check_selection(self.selection)

    def to_json(self) -> dict:
        data = {"keep": self.keep, "k_min": self.k_min,
                "profile": None if self.profile is None else self.profile.to_json()}
        if self.tune_logs is not None:  # absent key: a build without a database (older manifests too)
            data["tune_logs"] = self.tune_logs
        if self.selection != "head":  # absent key: per-head selection (older manifests too)
            data["selection"] = self.selection
        return data

    @classmethod
    def from_json(cls, data: dict) -> "BuildOptions":
        profile = data.get("profile")
        return cls(keep=data.get("keep"), k_min=int(data.get("k_min", 16)),
                   profile=None if profile is None else SparsityProfile.from_json(profile),
                   tune_logs=data.get("tune_logs"), selection=data.get("selection", "head"))

    def database(self) -> TuningDatabase | None:
        """The checked tuning database, or None; TuneLogsError (a ValueError) names the fix."""
        return None if self.tune_logs is None else open_database(self.tune_logs)

    def relax_pipeline(self, database: TuningDatabase | None = None, *, npu: NPUOptions | None = None,
                       lower: bool = True):
        keep = None if self.profile is not None and self.profile.layers else self.keep
        database = database if database is not None else self.database()
        return pipeline(keep=keep, profile=self.profile, k_min=self.k_min, tune_logs=database, npu=npu, lower=lower,
                        selection=self.selection)


def default_tune_logs(device_name: str) -> str | None:
    """``tune_logs/<device>`` (relative to the working directory) if it exists, else None."""
    path = Path("tune_logs") / device_name
    return str(path) if path.is_dir() else None


def shadowattn_ir(mod, target, options: BuildOptions, npu: NPUOptions | None = None):
    """`mod` through the shadowAttn phases for `target` (``pipeline(lower=False)``): the IR whose
    attributes carry the passes' results (`ir_attrs`: report, split blocks, NPU plans and graphs).
    npu: run the NPU phases (BucketPilot, PipelineHeads) with these options."""
    target = tvm.target.Target(target) if isinstance(target, str) else target
    with target:
        return options.relax_pipeline(npu=npu, lower=False)(mod)


def lower_ir(ir, target, options: BuildOptions, log=None):
    """The executable of a `shadowattn_ir` output: phase 5, with the options' tuning database.
    log: called with one line per tuned kernel and a coverage line when `options.tune_logs` is set
    (read from the lowered module, `ir_attrs.tuning_choices`)."""
    target = tvm.target.Target(target) if isinstance(target, str) else target
    database = options.database()
    with target:
        lowered = lowering(database=database)(ir)
    executable = tvm.compile(lowered, target=target, relax_pipeline=None)  # lowered above
    if log is not None and database is not None:
        log(f"[compile] tuning logs {database.work_dir}: {database.workloads()} workloads, {len(database)} records")
        for line in tuning_summary(tuning_choices(lowered), database):
            log(line)
    return executable


def compile_model(mod, target, options: BuildOptions, log=None, npu: NPUOptions | None = None):
    """``tvm.compile`` with the shadowAttn pipeline: `shadowattn_ir`, then `lower_ir`."""
    return lower_ir(shadowattn_ir(mod, target, options, npu), target, options, log)


def tuning_summary(tuning, database: TuningDatabase) -> list[str]:
    """What a compile took from the database: one line per kernel with a record, then the coverage."""
    lines = [f"[compile]   {choice.describe()}" for choice in tuning.choices]
    used = sum(1 for c in tuning.choices if c.use_tuned)
    lines.append(f"[compile] tuning logs {database.work_dir}: {len(tuning.choices)} of {tuning.tunable} tunable "
                 f"kernels have records, {used} scheduled from the database, the rest by the shipped schedules")
    if tuning.tunable and not tuning.choices:
        lines.append(f"[compile] warning: {database.work_dir} matches none of this build's kernels (tuned for "
                     "another model, length or keep?): re-run `shadowattn tune` with the same MODEL/--tokens/--keep")
    return lines


__all__ = ["BuildOptions", "compile_model", "default_tune_logs", "lower_ir", "shadowattn_ir", "tuning_summary",
           "TuneLogsError"]
