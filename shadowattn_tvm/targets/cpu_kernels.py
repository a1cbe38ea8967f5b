"""Default CPU schedules for the shadowAttn kernels (TVM applies none by default).

Each function takes an unscheduled PrimFunc from `ops/` and returns a scheduled one. Parallelism
is always over independent output rows (heads x query rows, or heads for reductions), never
across a reduction: a reduction inside a parallel loop must own its accumulator (see the
dlight race note in ../shared/TVM_0_27.md).

The pilot, top-k and (static head dims) sparse-attention kernels are hand-written TIR marked
``tirx.is_scheduled``: their schedule functions return them unchanged.

Vector widths come from the target (``ops._isa``: AVX-512, AVX2, SSE or NEON, read from the
enclosing ``with target:``, else this host): the quantiser's loops go two registers wide (32,
16, 8 and 8 float32 lanes). Build for the host's vector ISA: ``Target({"kind": "llvm",
"num-cores": 2})`` alone means generic x86-64 (SSE2) in LLVM; add ``"mcpu"``
(``tvm.target.codegen.llvm_get_system_cpu()``, or e.g. ``"x86-64-v3"`` for any AVX2+FMA
machine). The TVM runtime on this VM also starts only one worker thread unless
``TVM_NUM_THREADS`` is set.
"""
from __future__ import annotations

from .._compat import Schedule, tirx
from ..ops._isa import current_isa


def vector_lanes(isa=None) -> int:
    """float32/int32 lanes to aim for: two vector registers of the target's ISA."""
    return 2 * current_isa(isa).lanes()


def _static(loop_extent) -> int | None:
    return int(loop_extent.value) if isinstance(loop_extent, tirx.IntImm) else None


def _vectorize(sch, loop, lanes=None):
    """Vectorise a loop by `lanes` (default `vector_lanes()`) when its extent is static and
    divisible (else leave it)."""
    lanes = lanes or vector_lanes()
    extent = _static(sch.get(loop).extent)
    if extent is None:
        return
    if extent <= lanes or extent % lanes:
        if extent <= 64:
            sch.vectorize(loop)
        return
    _, inner = sch.split(loop, [None, lanes])
    sch.vectorize(inner)


def _finish(sch) -> "tirx.PrimFunc":
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _prescheduled(func) -> bool:
    attrs = func.attrs
    return attrs is not None and "tirx.is_scheduled" in attrs and bool(attrs["tirx.is_scheduled"])


def schedule_absmax(func):
    sch = Schedule(func)
    amax = sch.get_sblock("amax")
    sch.parallel(sch.get_loops(amax)[0])  # one head per task: each owns its accumulator
    return _finish(sch)


def schedule_quantize(func):
    sch = Schedule(func)
    block = sch.get_sblock("q8")
    *outer, inner = sch.get_loops(block)
    sch.parallel(sch.fuse(*outer))
    _vectorize(sch, inner)
    return _finish(sch)


def schedule_pilot(func):
    if _prescheduled(func):  # the hand-written kernel
        return func
    sch = Schedule(func)
    block = sch.get_sblock("scores")
    b, h, i, j, rd = sch.get_loops(block)
    j_extent = _static(sch.get(j).extent)
    lanes = 2 * vector_lanes()
    if j_extent is not None and j_extent % lanes == 0:
        jo, ji = sch.split(j, [None, lanes])
        sch.reorder(b, h, i, jo, rd, ji)
        sch.parallel(sch.fuse(b, h, i))
        sch.vectorize(ji)
        init = sch.decompose_reduction(block, rd)
        sch.vectorize(sch.get_loops(init)[-1])
    else:
        sch.parallel(sch.fuse(b, h, i))
    return _finish(sch)


def schedule_sparse_attention(func):
    if _prescheduled(func):  # the hand-written kernel (static head dims)
        return func
    try:
        return _schedule_sparse_attention_te(func)
    except Exception:  # pylint: disable=broad-except
        # e.g. symbolic lengths with an odd head dim: correct but unscheduled beats no kernel
        return func


def _schedule_sparse_attention_te(func):
    sch = Schedule(func)
    out = sch.get_sblock("out")
    b, h, i, e = sch.get_loops(out)
    row = sch.fuse(b, h, i)
    sch.parallel(row)
    sch.compute_inline(sch.get_sblock("logits"))
    for name in ("acc", "denom", "prob", "row_max", "dot"):
        sch.compute_at(sch.get_sblock(name), row)
    acc = sch.get_sblock("acc")
    e_loop, t_loop = sch.get_loops(acc)[-2:]
    sch.reorder(t_loop, e_loop)
    _vectorize(sch, e_loop, lanes=64)
    init = sch.decompose_reduction(acc, t_loop)
    _vectorize(sch, sch.get_loops(init)[-1], lanes=64)
    _vectorize(sch, sch.get_loops(out)[-1], lanes=64)
    return _finish(sch)
