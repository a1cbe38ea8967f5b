"""Adreno (OpenCL) GPU kernels for the CPU-lane stages of shadowAttn: top-k and sparse attention.

Both kernels give one query row (b, h, i) to one work-group of `THREADS` work-items:

* sparse attention: the generic TE definition (`ops.sparse_attention`, the same math as the CPU
  kernel) scheduled with `s_tir.Schedule`: the work-items split the row's top-k slots for the
  q·k dots (kept in local memory), reduce the row max and the softmax sum across the group, and
  then each accumulates p·V for its own output columns.
* top-k: `ops.topk`'s CPU kernel is a serial per-row search (while loops, a data-dependent
  compaction), which no GPU schedule can parallelise, so `targets.adreno.topk` writes a
  work-group-per-row kernel with the same inputs, outputs and selection rule.

Use `sparse_attention(...)` / `topk_indices(...)` (same arguments as the `ops` generators) to get
scheduled PrimFuncs and `targets.adreno.opencl.build_source` for their OpenCL C.

Not registered in `schedules._BY_KIND`: that registry's contract is a full schedule set for a
whole-model build (absmax, quantize, pilot and sparse attention, applied by SplitSparseAttention
under the build target), and the pilot is hand-written CPU TIR while the top-k kernel is not
routed through the registry at all. An "opencl" entry would make a GPU build silently run those
stages on the host. The Adreno lane instead takes the two CPU-lane stages of each attention block
as standalone OpenCL kernels (`builder.adreno`).
"""
from __future__ import annotations

from ..._compat import Schedule, tirx
from ...ops import sparse_attention as sparse_ops
from .topk import THREADS, topk_indices

_SPARSE_BLOCKS = ("dot", "logits", "row_max", "prob", "denom", "acc", "out")


def specialize(func, shapes):
    """`func` with the buffers named in `shapes` (name -> static shape) given those shapes.

    Static shapes make an OpenCL kernel's launch sizes constants and drop its shape arguments.
    """
    unknown = sorted(set(shapes) - {p.name for p in func.params})
    if unknown:
        raise ValueError(f"no buffer parameters {unknown} in this PrimFunc; it has {[p.name for p in func.params]}")
    binding = {}
    for param in func.params:
        # a buffer whose shape is derived from others (e.g. KV scales of H // group) follows them
        derived = any(not isinstance(d, (tirx.IntImm, tirx.Var)) for d in param.ty.shape)
        if param.name in shapes and not derived:
            shape = [tirx.IntImm("int64", int(d)) for d in shapes[param.name]]
            binding[param] = tirx.decl_buffer(shape, str(param.ty.dtype), name=param.name)
    return func.specialize(binding)


def _static(dim, what: str) -> int:
    value = dim if isinstance(dim, int) else getattr(dim, "value", None)
    if not isinstance(value, int):
        raise ValueError(f"Adreno sparse attention needs a static {what} (local memory is sized by it), got {dim}")
    return value


def sparse_attention(block, q_shape, kv_len, v_dim, top_k, mask_shape=None):
    """The GPU-scheduled sparse-attention PrimFunc (arguments as `ops.sparse_attention`)."""
    _static(top_k, "top_k")
    func = sparse_ops._sparse_attention_te(block, q_shape, kv_len, v_dim, top_k, mask_shape)  # pylint: disable=protected-access
    return schedule_sparse_attention(func)


def schedule_sparse_attention(func, threads: int = THREADS):
    """Schedule the TE sparse-attention definition: one work-group per query row.

    Local memory per group: top_k floats of q·k dots plus two scalars. The softmax weights are
    recomputed from the dots where they are used (exp is cheap next to a second top_k buffer).
    """
    sch = Schedule(func)
    try:
        for name in _SPARSE_BLOCKS:
            sch.get_sblock(name)
    except Exception:  # pylint: disable=broad-except  (TVM raises its own error types here)
        raise ValueError("not the TE sparse-attention definition (e.g. the hand-written CPU kernel, which no "
                         "GPU schedule fits): use targets.adreno.schedules.sparse_attention") from None
    out = sch.get_sblock("out")
    b, h, i, e = sch.get_loops(out)
    row = sch.fuse(b, h, i)
    sch.bind(row, "blockIdx.x")
    _, e_thread = sch.split(e, [None, threads])
    sch.bind(e_thread, "threadIdx.x")

    sch.compute_inline(sch.get_sblock("logits"))
    sch.compute_inline(sch.get_sblock("prob"))
    acc = sch.get_sblock("acc")
    sch.compute_at(acc, e_thread)  # each work-item owns its output columns' accumulators
    sch.set_scope(acc, 0, "local")
    for name in ("denom", "row_max", "dot"):  # reverse order: each lands before its consumer
        stage = sch.get_sblock(name)
        sch.compute_at(stage, row)
        sch.set_scope(stage, 0, "shared")
        loop = sch.get_loops(stage)[1]  # slots (dot) or the reduction over slots (max, sum)
        _, inner = sch.split(loop, [None, threads])
        sch.bind(inner, "threadIdx.x")  # a cross-work-item reduction for row_max and denom
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


__all__ = ["THREADS", "schedule_sparse_attention", "sparse_attention", "specialize", "topk_indices"]
