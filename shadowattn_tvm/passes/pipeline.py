"""`pipeline()`: the shadowAttn pass set as one pass for ``tvm.compile(..., relax_pipeline=...)``.

Phases (numbered as in DESIGN.md; 3 and 4 run only with ``npu=NPUOptions(...)``):
  0 canonicalize : Normalize, FoldConstant (constant masks and scales become visible)
  1 detect       : DetectAttention  - outline attention blocks, report the rest
  2 split        : SplitSparseAttention - pilot -> top-k -> sparse
  3 bucket       : BucketPilot - the pilot as static NPU graph launches over a (λQ, λK) grid
  4 pipeline     : PipelineHeads - async NPU launches in the planner's order, waits where data flows
  5 lower        : TVM's backend stages for the target, fusion included, with our kernels kept
                   whole and, on CPUs, a tuned or default schedule for every other kernel
                   (`lowering.py`; omit with lower=False)

With ``tune_logs=DIR`` (a MetaSchedule database from `shadowattn tune`), sparse kernels whose tuned
record beats the hand-written one are emitted in their tunable form before phase 5
(`UseTunableKernels`), and phase 5 schedules every kernel by its record where the record wins
(`ApplyTuningDatabase`); the lowered module then lists those choices (`ir_attrs.tuning_choices`).
"""
from __future__ import annotations

from pathlib import Path

from .._compat import relax, tvm, tvm_ffi
from ..block import ScaleMode
from ..calibrate.profile import ProfileError, SparsityProfile, check_k_min, check_keep
from ..ir_attrs import attention_report
from ..npu.costs import DeviceCostModel
from ..npu.options import NPUOptions
from ..report import AttentionReport
from ..tuning.database import TuningDatabase, open_database
from ..targets import DeviceProfile
from ..targets import get as get_device
from .bucket_pilot import BucketPilot
from .detect_attention import DetectAttention
from .lowering import lowering
from .pipeline_heads import PipelineHeads
from .split_sparse_attention import SplitSparseAttention, check_selection
from .use_tunable_kernels import UseTunableKernels


class UnsupportedAttentionError(RuntimeError):
    """strict=True and some attention block had to stay dense."""


# Our passes run behind TVM's FFI, which turns unregistered Python errors into RuntimeError: with
# these registered, a caller (and the CLI) catches the typed error it was promised.
for _error in (ProfileError, UnsupportedAttentionError):
    tvm_ffi.register_error(_error)


def pipeline(
    device: DeviceProfile | str | None = None,
    profile: SparsityProfile | None = None,
    keep: float | None = 0.2,
    *,
    report: AttentionReport | None = None,
    k_min: int = 16,
    scale_mode: ScaleMode | str | None = None,
    strict: bool = False,
    lower: bool = True,
    dump_ir: str | Path | None = None,
    npu: NPUOptions | None = None,
    tune_logs: TuningDatabase | str | Path | None = None,
    verify: bool = False,
    selection: str = "head",
) -> tvm.transform.Pass:
    """Build the shadowAttn pass set for `device`.

    device: what the program runs on: None (this host), a device name (`targets.known()`), a
        profile JSON path or a `targets.DeviceProfile`. A device with an NPU gets phases 3-4 (every
        pilot an NPU launch, planned with the device's cost model) unless `npu` is given.
    profile: per-head ratios and optional static scales (`SparsityProfile`); an NPU needs scales.
    keep: global keep ratio in (0, 1] used when no profile is given (a profile carries its own).
    report: an `AttentionReport` the pipeline fills after its run from the module's
        ``ir_attrs.REPORT`` (for callers of ``tvm.compile``, which returns only the executable).
    k_min: minimum keys kept per visible row.
    scale_mode: "static" (profile scales, as an NPU graph needs), "dynamic" (absmax at run time),
        or None: static when the profile has scales, else dynamic.
    strict: raise `UnsupportedAttentionError` if any attention candidate stays dense.
    lower: append phase 5 (False returns the shadowAttn-level IR, its results as attributes).
    dump_ir: a directory; the IR after each phase is written there as TVMScript.
    npu: the options of phases 3 (BucketPilot) and 4 (PipelineHeads); for the host (device None)
        they run only when given. The compiled program then needs static shapes and calls the NPU
        lane (`npu_abi`). Their results are IR attributes (`ir_attrs.layer_plans`,
        `ir_attrs.npu_graphs` of the ``lower=False`` output).
    tune_logs: a MetaSchedule database directory (`shadowattn tune`) or `TuningDatabase`: tuned
        kernels replace shipped ones where their records are faster (see the module docstring).
    selection: "head" (the paper's: a top-k per query head and row) or "group" (one top-k per KV head
        and row, shared by the group's query heads, see `SplitSparseAttention`; with an NPU lane
        each launch unit, one KV group, selects once for its heads).
    verify: check the IR is well formed (`relax.analysis.check_well_formed`) after every phase (from
        phase 0's normalized form on); an ill-formed module raises RuntimeError naming the phase.
    """
    if profile is None:
        if keep is None:
            raise ProfileError("pass keep=<ratio in (0, 1]> or a profile")
        profile = SparsityProfile.uniform(check_keep(keep))
    elif keep is not None and profile.layers and check_keep(keep) != profile.keep:
        raise ProfileError(
            f"keep={keep} conflicts with the profile's keep={profile.keep}: pass keep=None to use the profile"
        )
    k_min = check_k_min(k_min)
    scale_mode = None if scale_mode is None else ScaleMode(scale_mode)
    if npu is None and device is not None and get_device(device).npu is not None:
        npu = NPUOptions(costs=DeviceCostModel(keep=profile.keep))
    check_selection(selection)
    phases = [
        ("0_canonicalize", tvm.transform.Sequential([relax.transform.Normalize(), relax.transform.FoldConstant()])),
        ("1_detect", DetectAttention()),
        ("2_split", SplitSparseAttention(profile, k_min=k_min, scale_mode=scale_mode, selection=selection)),
    ]
    if npu is not None:
        phases += [("3_bucket", BucketPilot(npu, profile, k_min=k_min)), ("4_pipeline", PipelineHeads(npu.costs))]
    database = tune_logs if tune_logs is None or isinstance(tune_logs, TuningDatabase) else open_database(tune_logs)
    if database is not None:  # only sparse kernels whose record wins take the tunable form
        phases.append(("4b_tunable", UseTunableKernels(database)))
    lower_pass = lowering(database=database)
    dump_dir = Path(dump_ir) if dump_ir is not None else None

    @tvm.transform.module_pass(opt_level=0, name="ShadowAttnPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for name, phase in phases:
            mod = phase(mod)
            if verify:
                _check_well_formed(mod, f"phase {name}")
            if dump_dir is not None:
                dump_dir.mkdir(parents=True, exist_ok=True)
                (dump_dir / f"{name}.py").write_text(mod.script(show_meta=False))
        found = attention_report(mod)
        if report is not None:
            report.candidates[:] = found.candidates
        if strict and found.dense:
            raise UnsupportedAttentionError(
                "attention blocks left dense (strict=True):\n"
                + "\n".join(f"  {c.function}: {c.reason}" for c in found.dense)
            )
        return lower_pass(mod) if lower else mod

    return _pipeline


def _check_well_formed(mod: tvm.IRModule, after: str) -> None:
    if not relax.analysis.check_well_formed(mod):
        raise RuntimeError(f"internal error: the IR after {after} is not well formed (see TVM's log above); "
                           "please report it with the model")

