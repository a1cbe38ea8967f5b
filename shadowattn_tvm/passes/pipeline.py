"""`pipeline()`: the shadowAttn pass set as one pass for ``tvm.compile(..., relax_pipeline=...)``.

Phases (numbered as in DESIGN.md; 3 and 4 run only with ``npu=NPUOptions(...)``):
  0 canonicalize : Normalize, FoldConstant (constant masks and scales become visible)
  1 detect       : DetectAttention  - outline attention blocks, report the rest
  2 split        : SplitSparseAttention - pilot -> top-k -> sparse
  3 bucket       : BucketPilot - the pilot as static NPU graph launches over a (λQ, λK) grid
  4 pipeline     : PipelineHeads - async NPU launches in the planner's order, waits where data flows
  5 lower        : TVM's default Relax lowering for the target, plus, on CPUs, a default
                   schedule for every kernel that has none (`lowering()`; omit with lower=False)

With ``tune_logs=DIR`` (a MetaSchedule database from `shadowattn tune`), sparse kernels whose tuned
record beats the hand-written one are emitted in their tunable form before phase 5
(`UseTunableKernels`), and phase 5 schedules every kernel by its record where the record wins
(`ApplyTuningDatabase`); ``.tuning`` on the returned pass then lists those choices.
"""
from __future__ import annotations

from pathlib import Path

from .._compat import relax, tvm, tvm_ffi
from ..block import ScaleMode
from ..calibrate.profile import ProfileError, SparsityProfile, check_k_min, check_keep
from ..npu.options import NPUOptions
from ..schedules.tune_database import TuningDatabase
from .apply_tuning_database import ApplyTuningDatabase
from .bucket_pilot import BucketPilot
from .detect_attention import DetectAttention
from .pipeline_heads import PipelineHeads
from .report import AttentionReport
from .schedule_default_cpu import ScheduleDefaultCPU
from .split_sparse_attention import SplitSparseAttention
from .use_tunable_kernels import UseTunableKernels


def lowering(target=None, database: TuningDatabase | str | Path | None = None) -> tvm.transform.Pass:
    """Phase 5: TVM's default Relax lowering, with `ScheduleDefaultCPU` after LegalizeOps on CPUs.

    Usable alone for a scheduled dense build: ``tvm.compile(mod, relax_pipeline=sat.lowering())``.
    database: tuning logs (`TuningDatabase` or its directory) applied before the default schedules
    on CPUs; the returned pass's ``.tuning`` (`ApplyTuningDatabase`) lists what they scheduled. To
    lower the output of ``p = pipeline(..., lower=False)``, pass ``database=p.tuning``.
    """
    if isinstance(database, ApplyTuningDatabase):  # a pipeline's own (`.tuning`): lower what it ran
        tuning = database
    else:
        if database is not None and not isinstance(database, TuningDatabase):
            database = TuningDatabase(database)
        tuning = None if database is None else ApplyTuningDatabase(database, target)

    @tvm.transform.module_pass(opt_level=0, name="ShadowAttnLowering")
    def _lower(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        tgt = target or tvm.target.Target.current(allow_none=True)
        if tgt is not None and "cpu" not in tgt.keys:
            return relax.get_default_pipeline(tgt)(mod)
        seq = [
            relax.backend.DispatchSampling(),
            relax.backend.DispatchSortScan(),
            relax.transform.LegalizeOps(),
            *([tuning] if tuning is not None else []),
            ScheduleDefaultCPU(),
            relax.transform.RewriteDataflowReshape(),
            relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(),
            relax.transform.CallTIRRewrite(),
            relax.transform.StaticPlanBlockMemory(),
            relax.transform.LowerAllocTensor(),
            relax.transform.KillAfterLastUse(),
            relax.transform.LowerRuntimeBuiltin(),
            relax.transform.ComputePrimValue(),
            relax.transform.VMShapeLower(),
            relax.transform.AttachGlobalSymbol(),
        ]
        return tvm.transform.Sequential(seq)(mod)

    _lower.tuning = tuning  # type: ignore[attr-defined]
    return _lower


class UnsupportedAttentionError(RuntimeError):
    """strict=True and some attention block had to stay dense."""


# Our passes run behind TVM's FFI, which turns unregistered Python errors into RuntimeError: with
# these registered, a caller (and the CLI) catches the typed error it was promised.
for _error in (ProfileError, UnsupportedAttentionError):
    tvm_ffi.register_error(_error)


def pipeline(
    keep: float | None = 0.2,
    profile: SparsityProfile | None = None,
    report: AttentionReport | None = None,
    *,
    k_min: int = 16,
    scale_mode: ScaleMode | str | None = None,
    strict: bool = False,
    lower: bool = True,
    dump_ir: str | Path | None = None,
    npu: NPUOptions | None = None,
    tune_logs: TuningDatabase | str | Path | None = None,
    verify: bool = False,
) -> tvm.transform.Pass:
    """Build the shadowAttn pass set.

    keep: global keep ratio in (0, 1] used when no profile is given (a profile carries its own).
    profile: per-head ratios and optional static scales (`SparsityProfile`).
    report: an `AttentionReport` to fill with every candidate block and its fate.
    k_min: minimum keys kept per visible row.
    scale_mode: "static" (profile scales, as an NPU graph needs), "dynamic" (absmax at run time),
        or None: static when the profile has scales, else dynamic.
    strict: raise `UnsupportedAttentionError` if any attention candidate stays dense.
    lower: append TVM's default lowering (False returns the shadowAttn-level IR).
    dump_ir: a directory; the IR after each phase is written there as TVMScript.
    npu: run the NPU-lane phases 3 (BucketPilot) and 4 (PipelineHeads) with these options; the
        compiled program then needs static shapes and calls the NPU lane (`npu_abi`). Their
        results are IR attributes (`ir_attrs.layer_plans`, `ir_attrs.npu_graphs` of the
        ``lower=False`` output).
    tune_logs: a MetaSchedule database directory (`shadowattn tune`) or `TuningDatabase`: tuned
        kernels replace shipped ones where their records are faster (see the module docstring).
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
    report = report if report is not None else AttentionReport()
    scale_mode = None if scale_mode is None else ScaleMode(scale_mode)
    phases = [
        ("0_canonicalize", tvm.transform.Sequential([relax.transform.Normalize(), relax.transform.FoldConstant()])),
        ("1_detect", DetectAttention(report)),
        ("2_split", SplitSparseAttention(profile, k_min=k_min, scale_mode=scale_mode, report=report)),
    ]
    if npu is not None:
        phases += [("3_bucket", BucketPilot(npu, profile, k_min=k_min)), ("4_pipeline", PipelineHeads(npu.costs))]
    database = tune_logs if tune_logs is None or isinstance(tune_logs, TuningDatabase) else TuningDatabase(tune_logs)
    lower_pass = lowering(database=database)
    if database is not None:  # only sparse kernels whose record wins take the tunable form
        phases.append(("4b_tunable", UseTunableKernels(select=lambda f: _tuned_wins(database, f, lower_pass.tuning))))
    dump_dir = Path(dump_ir) if dump_ir is not None else None

    @tvm.transform.module_pass(opt_level=0, name="ShadowAttnPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        report.clear()
        if lower_pass.tuning is not None:
            lower_pass.tuning.reset()
        for name, phase in phases:
            mod = phase(mod)
            if verify:
                _check_well_formed(mod, f"phase {name}")
            if dump_dir is not None:
                dump_dir.mkdir(parents=True, exist_ok=True)
                (dump_dir / f"{name}.py").write_text(mod.script(show_meta=False))
        if strict and report.dense:
            raise UnsupportedAttentionError(
                "attention blocks left dense (strict=True):\n"
                + "\n".join(f"  {c.function}: {c.reason}" for c in report.dense)
            )
        if lower:
            mod = lower_pass(mod)
        return mod

    _pipeline.report = report  # type: ignore[attr-defined]
    _pipeline.tuning = lower_pass.tuning  # type: ignore[attr-defined]
    return _pipeline


def _check_well_formed(mod: tvm.IRModule, after: str) -> None:
    if not relax.analysis.check_well_formed(mod):
        raise RuntimeError(f"internal error: the IR after {after} is not well formed (see TVM's log above); "
                           "please report it with the model")


def _tuned_wins(database: TuningDatabase, func, tuning: ApplyTuningDatabase) -> bool:
    choice = database.choice("sat_sparse_attention (tunable form)", func)
    wins = choice is not None and choice.use_tuned
    if not wins:
        tuning.note_untaken(choice)
    return wins
