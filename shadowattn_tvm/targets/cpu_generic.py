"""Default CPU schedules for the model around attention: matmuls with their fused epilogues,
norms, softmax and the data-movement kernels (reshapes, transposes, RoPE).

TVM's CPU pipeline schedules nothing, so a legalized model runs serial scalar loops (~1.7 GFLOP/s
for a matmul here). The matmul rule is a BLAS-style kernel written as a TIR schedule:

  parallel over output tiles (batch x Mc rows x Nc columns; spatial only, so race-free)
    pack B's K x Nc tile into [Nc/nr, K, nr] (a buffer private to the task: contiguous panels)
    for each nr-column panel, for each mr-row block (or rows outer when K is short):
      acc[mr, nr] = 0 in registers; for k: acc += A[i, k] (broadcast) * Bp[k, :] (vector FMAs)
      write acc back through the fused epilogue (residual add, SwiGLU product, scale + mask)

The register block comes from the target (`cpu_matmul_plan`, `CoreShape`: lanes and vector registers; AVX2 4x24,
AVX-512 4x96, NEON 4x24 for SmolLM2's shapes) and the shape: the largest block that fits the
register file and divides the shape, so the hot loop has no tail predicates. Odd or symbolic
shapes keep the structure with narrower vectors or predicated tails; a block the rule cannot
handle falls back to the outer-parallel rule, then to no schedule. Row kernels (softmax,
rms_norm) run one parallel loop over rows with every step per row inside it and vector
reductions (rfactor). exp and sigmoid become vectorisable arithmetic (`cpu_fast_math`).
Parallel loops only ever cover spatial (output) iterations.
"""
from __future__ import annotations

import math

from .._compat import Schedule, tirx, tvm
from . import cpu_fast_math as fast_math
from .cpu_matmul_plan import CoreShape, MatmulPlan, plan_matmul

_SPATIAL, _REDUCE = 0, 2  # IterVar.iter_type values


def _static(extent) -> int | None:
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def _iter_types(sch, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _is_matmul(sch, block) -> bool:
    """A block ``C[.., i, j] += A[.., i, k] * B[.., k, j]`` (any operand layout) over loops (.., i, j, k)."""
    blk = sch.get(block)
    types = _iter_types(sch, block)
    if not (len(types) == len(sch.get_loops(block)) >= 3 and types[-1] == _REDUCE and types.count(_REDUCE) == 1):
        return False
    store, value = blk.body, getattr(blk.body, "value", None)
    if not (isinstance(store, tirx.BufferStore) and isinstance(value, tirx.Add) and isinstance(value.b, tirx.Mul)
            and isinstance(value.a, tvm.ir.TensorLoad) and value.a.source.same_as(store.buffer)):
        return False
    vi, vj, vk = (iv.var for iv in blk.iter_vars[-3:])
    used = [{v.name for v in tirx.analysis.undefined_vars(operand, [])} for operand in (value.b.a, value.b.b)]
    if not all(vk.name in u for u in used):
        return False
    return any(vi.name in a and vj.name not in a and vj.name in b and vi.name not in b for a, b in (used, used[::-1]))


def _b_operand(sch, block) -> tuple[int, int, int] | None:
    """(read index, k axis, j axis) of the operand indexed by j and k but not i, if plain."""
    blk = sch.get(block)
    vi, vj, vk = (iv.var for iv in blk.iter_vars[-3:])
    for idx, read in enumerate(blk.reads):
        mins = [r.min for r in read.region]
        if not all(isinstance(x, (tirx.Var, tirx.IntImm)) for x in mins):
            continue
        if any(x.same_as(vi) for x in mins):
            continue
        kax = [a for a, x in enumerate(mins) if x.same_as(vk)]
        jax = [a for a, x in enumerate(mins) if x.same_as(vj)]
        if len(kax) == 1 and len(jax) == 1:
            return idx, kax[0], jax[0]
    return None


def _inline_epilogue(sch, block) -> None:
    """Inline the elementwise blocks downstream of the matmul into one another (the last one is
    inlined into the accumulator's write-back later). Root blocks come in dataflow order."""
    names = _root_block_names(sch)
    downstream = {sch.get(block).name_hint}
    for name in names[names.index(sch.get(block).name_hint) + 1:]:
        consumer = sch.get_sblock(name)
        if not any(sch.get(p).name_hint in downstream for p in sch.get_producers(consumer)):
            continue
        downstream.add(name)
        if all(t == _SPATIAL for t in _iter_types(sch, consumer)) and len(sch.get_consumers(consumer)) == 1:
            try:
                sch.compute_inline(consumer)
            except RuntimeError:  # a ScheduleError: not inlinable, stays its own block
                pass


def _pack_layout(ndim: int, kax: int, jax: int, nr: int):
    """[.., K, .., N, ..] -> [.., N/nr, K, nr]: each nr-column micro-panel contiguous over k."""
    def index_map(*axes):
        rest = [a for d, a in enumerate(axes) if d not in (kax, jax)]
        return (*rest, axes[jax] // nr, axes[kax], axes[jax] % nr)

    return index_map


def schedule_matmul(sch, block, isa: CoreShape, plan: MatmulPlan | None = None, pack: bool = True) -> None:
    """The register-blocked, packed, parallel matmul described in the module docstring
    (`pack=False`: B read in place, the fallback when packing cannot be expressed)."""
    *batch, i, j, k = sch.get_loops(block)
    dims = [_static(sch.get(loop).extent) for loop in (i, j, k)]
    batch_extents = [_static(sch.get(loop).extent) for loop in batch]
    batch_size = None if None in batch_extents else math.prod(batch_extents)
    plan = plan or plan_matmul(*dims, batch_size, isa)
    b_operand = _b_operand(sch, block) if plan.pack and pack else None

    _inline_epilogue(sch, block)
    writeback = sch.cache_write(block, 0, "local")  # the accumulator tile, kept in registers
    for consumer in sch.get_consumers(writeback):
        if all(t == _SPATIAL for t in _iter_types(sch, consumer)):
            try:
                sch.reverse_compute_inline(consumer)
            except RuntimeError:  # e.g. the matmul's result is also read elsewhere
                pass
            break

    io, ii = sch.split(i, [None, plan.mr])
    ic, ir = sch.split(io, [None, plan.rows])
    jo, ji = sch.split(j, [None, plan.nr])
    jc, jr = sch.split(jo, [None, plan.cols])
    jv, jl = sch.split(ji, [plan.nv, plan.lanes])
    if plan.row_major:
        sch.reorder(*batch, ic, jc, ir, jr, k, ii, jv, jl)
        inner = jr
    else:
        sch.reorder(*batch, ic, jc, jr, ir, k, ii, jv, jl)
        inner = ir
    task = sch.fuse(*batch, ic, jc)
    sch.parallel(task)
    sch.reverse_compute_at(writeback, inner)

    if b_operand is not None:
        idx, kax, jax = b_operand
        packed = sch.cache_read(block, idx, "global")
        sch.compute_at(packed, task)
        ndim = len(sch.get(block).reads[idx].region)
        sch.transform_layout(block, ("read", idx), _pack_layout(ndim, kax, jax, plan.nr))
        _vectorize_inner(sch, packed, plan.lanes)

    sch.unroll(ii)
    sch.unroll(jv)
    if plan.lanes > 1:
        sch.vectorize(jl)
    init = sch.decompose_reduction(block, k)
    *_, init_i, init_v, init_l = sch.get_loops(init)
    sch.unroll(init_i)
    sch.unroll(init_v)
    if plan.lanes > 1:
        sch.vectorize(init_l)
    _vectorize_inner(sch, writeback, plan.lanes)


def _vectorize_inner(sch, block, lanes: int) -> None:
    """Vectorise the innermost loop of `block` by `lanes` when it divides (else leave it)."""
    inner = sch.get_loops(block)[-1]
    extent = _static(sch.get(inner).extent)
    if lanes <= 1 or extent is None or extent % lanes:
        return
    _, vec = sch.split(inner, [None, lanes])
    sch.vectorize(vec)


def schedule_outer_parallel(sch, block, isa: CoreShape | None = None) -> None:
    """Fuse the leading spatial loops of a block and run them in parallel; vectorise the row."""
    loops = sch.get_loops(block)
    types = _iter_types(sch, block)
    if len(types) != len(loops) or not loops:
        return
    lead = 0
    while lead < len(loops) and types[lead] == _SPATIAL:
        lead += 1
    if lead == len(loops) and lead > 1:
        lead -= 1  # keep the innermost loop for the vectoriser
    if lead == 0:
        return
    sch.parallel(sch.fuse(*loops[:lead]) if lead > 1 else loops[0])
    if isa is not None and lead < len(loops) and "prim.if_then_else" not in _calls(sch, block):
        _vectorize_row(sch, block, isa.lanes)  # (a select per lane, as in RoPE, is faster scalar)


def schedule_rows(sch, names: list[str], isa: CoreShape) -> None:
    """Blocks that work row by row (softmax, rms_norm: reductions and elementwise steps over the
    last axis): one parallel loop over the rows of the last block, every other block computed
    per row inside it (the row stays in L1), each row loop vectorised; a reduction over the row
    first becomes `lanes` partial results (rfactor) so that its loop is a vector loop too."""
    last = sch.get_sblock(names[-1])
    loops = sch.get_loops(last)
    if len(loops) < 2 or any(t != _SPATIAL for t in _iter_types(sch, last)):
        raise ValueError("not a row-wise kernel")
    partials = [p for name in names[:-1] for p in _rfactor_row(sch, sch.get_sblock(name), isa.lanes)]
    names = _root_block_names(sch)
    row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    sch.parallel(row)
    for name in reversed(names[:-1]):
        sch.compute_at(sch.get_sblock(name), row)
    for name in names:
        block = sch.get_sblock(name)
        if name not in partials:
            _vectorize_row(sch, block, isa.lanes)
            continue
        lane, outer = sch.get_loops(block)[-2:]  # compute_at made loops in block-var order: lane, then k
        sch.reorder(outer, lane)
        sch.vectorize(lane)
        sch.vectorize(sch.get_loops(sch.decompose_reduction(block, outer))[-1])


def _rfactor_row(sch, block, lanes: int) -> list[str]:
    """Split a reduction over the last axis into `lanes` partial results; the partial block's name."""
    loops = sch.get_loops(block)
    types = _iter_types(sch, block)
    extent = _static(sch.get(loops[-1]).extent) if loops else None
    if (lanes <= 1 or extent is None or extent % lanes or extent < 2 * lanes or types[-1] != _REDUCE
            or types.count(_REDUCE) != 1):
        return []
    _, inner = sch.split(loops[-1], [None, lanes])
    return [sch.get(sch.rfactor(inner, factor_axis=0)).name_hint]


def _vectorize_row(sch, block, lanes: int) -> None:
    """Vectorise the innermost loop of a purely spatial block below its (parallel) row loop."""
    loops = sch.get_loops(block)
    extent = _static(sch.get(loops[-1]).extent) if len(loops) > 1 else None
    if (extent is not None and lanes > 1 and extent % lanes == 0 and extent >= 2 * lanes
            and all(t == _SPATIAL for t in _iter_types(sch, block))):
        _vectorize_inner(sch, block, lanes)


def _calls(sch, block) -> set[str]:
    body = sch.get(block).body
    return fast_math.calls(body.value) if isinstance(body, tirx.BufferStore) else {"?"}


def _is_cheap(sch, block) -> bool:
    """True when the block stores a value with no call beyond selects: recomputing it costs ~0."""
    return not (_calls(sch, block) - fast_math.FREE_CALLS)


def _inline_cheap_producers(sch) -> None:
    """Inline cheap elementwise blocks (reshapes, transposes, casts) into consumers that read them
    once per element, except into a matmul (its operands are read once per register block). A
    consumer reading several neighbours (RoPE's pairs) would repeat the producer's index math."""
    for name in reversed(_root_block_names(sch)):
        block = sch.get_sblock(name)
        consumers = sch.get_consumers(block)
        if (not consumers or any(t != _SPATIAL for t in _iter_types(sch, block)) or not _is_cheap(sch, block)
                or any(_is_matmul(sch, c) or _reads_of(sch, c, block) > 1 for c in consumers)):
            continue
        if not _is_copy(sch, block) and any(_points(sch, c) != _points(sch, block) for c in consumers):
            continue  # a broadcast (GQA's repeated heads) would recompute the producer per copy
        try:
            sch.compute_inline(block)
        except RuntimeError:  # a ScheduleError: e.g. it writes a function output
            pass


def _points(sch, block) -> int | None:
    extents = [_static(iv.dom.extent) for iv in sch.get(block).iter_vars]
    return None if None in extents else math.prod(extents)


def _is_copy(sch, block) -> bool:
    """A block that only moves values (reshape, transpose, broadcast, cast)."""
    value = getattr(sch.get(block).body, "value", None)
    while isinstance(value, tirx.Cast):
        value = value.value
    return isinstance(value, tvm.ir.TensorLoad)


def _reads_of(sch, consumer, producer) -> int:
    """How many loads of the producer's output the consumer's value makes."""
    body, written = sch.get(consumer).body, sch.get(producer).writes[0].source
    if not isinstance(body, tirx.BufferStore):
        return 2
    return sum(1 for node in fast_math.nodes(body.value)
               if isinstance(node, tvm.ir.TensorLoad) and node.source.same_as(written))


def schedule_default(func, target=None):
    """Schedule an unscheduled PrimFunc for `target` (default: the current target): matmuls and
    their epilogues, row-wise kernels, then the rest block by block; what no rule can schedule
    stays as it is. exp and sigmoid become vectorisable arithmetic first (`cpu_fast_math`)."""
    isa = CoreShape.of(target)
    sch = _attempt(Schedule(func), _inline_cheap_producers)
    sch = _attempt(sch, fast_math.use_fast_exp)  # after inlining: a fast exp is not cheap to recompute
    names = _root_block_names(sch)
    blocks = [sch.get_sblock(n) for n in names]
    if any(_REDUCE in _iter_types(sch, b) for b in blocks) and not any(_is_matmul(sch, b) for b in blocks):
        rows = _attempt(sch, lambda s: schedule_rows(s, names, isa), keep_on_failure=False)
        if rows is not None:
            return rows.mod["main"].with_attr("tirx.is_scheduled", True)
    for name in names:
        if name not in _root_block_names(sch):
            continue  # inlined into a matmul's write-back
        matmul = _is_matmul(sch, sch.get_sblock(name))
        sch = _first_that_applies(sch, name, [
            *([lambda s, b: schedule_matmul(s, b, isa), lambda s, b: schedule_matmul(s, b, isa, pack=False)]
              if matmul else []),
            lambda s, b: schedule_outer_parallel(s, b, isa),
            schedule_outer_parallel,  # unvectorised
        ])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _attempt(sch, rule, keep_on_failure=True):
    """Run `rule` on a copy; the copy if it succeeds, else the original (or None)."""
    trial = sch.copy()
    try:
        rule(trial)
    except Exception:  # noqa: BLE001 - a failed rule leaves the kernel to the next, simpler one
        return sch if keep_on_failure else None
    return trial


def _first_that_applies(sch, name: str, rules):
    """Try each rule on a copy of the schedule; keep the first that succeeds."""
    for rule in rules:
        trial = sch.copy()
        try:
            rule(trial, trial.get_sblock(name))
        except Exception:  # noqa: BLE001 - any failure of a rule means: try the next, simpler one
            continue
        return trial
    return sch


def _root_block_names(sch) -> list[str]:
    return [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
