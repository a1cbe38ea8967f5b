"""HVX schedule of one NPU bucket graph: int8 Q·Kᵀ on `vrmpy`, quantization scalar.

Input: `ops.npu_graph.bucket_graph_hvx` (or any bucket graph: `schedule_bucket_graph` derives the
HVX form from its parameters). Output: a scheduled PrimFunc for `targets.hexagon`, whose loop nest
is

    k_u8 of the group's one K head, once (scalar: divide, round, shift to uint8, pack 32 keys x
        4 bytes per vector); every fused head reads it
    for each fused head h, for each block of `rows` query rows:
        q8 and q_bias of those rows (scalar)
        for each 32-key block: rows accumulators = 0;
            for each 4-deep slice of head_dim: rows x vrmpybus.acc (one K vector, one Q word)
            scores[rows, 32 keys] = accumulators + q_bias   (HVX int32 adds and stores)

The inner update is tensorized with `VRMPY_INTRIN` (registered by `register_intrinsics`, called
here on first use, never at import). Quantization stays scalar on purpose: HVX float (qf32) is
not IEEE, so vectorized division/rounding would not match numpy bit for bit (and qemu 7.2 aborts
on it); `targets.hexagon` also turns off `hvx-qfloat` so LLVM cannot vectorize it either.
"""
from __future__ import annotations

from ..._compat import T, fast_script_parsing, s_tir
from ...ops.npu_graph import HVX_DEPTH, HVX_KEYS, bucket_graph_hvx, bucket_params, signed_byte

VRMPY_INTRIN = "shadowattn_hvx_vrmpybus_acc_32x4"
_ROW_BLOCKS = (4, 2, 1)  # query rows sharing one K vector load (accumulators live in registers)


@fast_script_parsing()
def _vrmpy_intrin(q_scope: str, acc_scope: str):
    """(desc, impl) of one vrmpybus.acc: 32 int32 accumulators (`acc_scope`) += 32 keys x 4 uint8
    of packed K (global) . the 4 int8 of one Q word (`q_scope`)."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (1,), "int32", offset_factor=1, scope=q_scope)
        B = T.match_buffer(b, (HVX_KEYS, HVX_DEPTH), "uint8", offset_factor=1)
        C = T.match_buffer(c, (HVX_KEYS,), "int32", offset_factor=1, scope=acc_scope)
        with T.sblock("root"):
            T.reads(C[0:HVX_KEYS], A[0:1], B[0:HVX_KEYS, 0:HVX_DEPTH])
            T.writes(C[0:HVX_KEYS])
            for i, k in T.grid(HVX_KEYS, HVX_DEPTH):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + signed_byte(A[0], vk) * T.Cast("int32", B[vi, vk])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (1,), "int32", offset_factor=1, scope=q_scope)
        B = T.match_buffer(b, (HVX_KEYS, HVX_DEPTH), "uint8", offset_factor=1)
        C = T.match_buffer(c, (HVX_KEYS,), "int32", offset_factor=1, scope=acc_scope)
        with T.sblock("root"):
            T.reads(C[0:HVX_KEYS], A[0:1], B[0:HVX_KEYS, 0:HVX_DEPTH])
            T.writes(C[0:HVX_KEYS])
            # Vd.w[i] += sum_k Vu.ub[4i+k] * Rt.b[k]: K is the vector (32 keys), Q the scalar word
            C[T.ramp(T.int32(0), 1, HVX_KEYS)] = T.call_llvm_pure_intrin(
                "int32x32", "llvm.hexagon.V6.vrmpybus.acc.128B",
                C[T.ramp(T.int32(0), 1, HVX_KEYS)],
                T.reinterpret("int32x32", B.vload([0, 0], "uint8x128")),
                A[0])

    return desc, impl


def register_intrinsics() -> None:
    """Register `VRMPY_INTRIN` with TVM (idempotent). `s_tir.tensorize` with TVM's own Hexagon
    intrinsics would import every tensor-intrinsic module (~1 min); this one is all we need."""
    if s_tir.TensorIntrin.get(VRMPY_INTRIN, allow_missing=True) is None:
        s_tir.TensorIntrin.register(VRMPY_INTRIN, *_vrmpy_intrin("local", "local"))


def rows_per_block(q_chunk: int) -> int:
    """Query rows per K-vector load: the largest of 4, 2, 1 dividing `q_chunk` (a tail block
    would put a predicate on the tensorized loop, which tensorize rejects)."""
    return next(r for r in _ROW_BLOCKS if q_chunk % r == 0)


def _loops_under(sch, block, parent) -> list:
    """The loops of `block` nested inside loop `parent`, outermost first."""
    loops = sch.get_loops(block)
    at = next(n for n, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(parent)))
    return loops[at + 1:]


def _fuse(sch, loops) -> None:
    if len(loops) > 1:
        sch.fuse(*loops)


def schedule_bucket_graph(func):
    """The HVX-scheduled PrimFunc of bucket graph `func` (`bucket_graph` or `bucket_graph_hvx`)."""
    register_intrinsics()
    params = bucket_params(func)
    sch = s_tir.Schedule(bucket_graph_hvx(**params))
    rows = rows_per_block(params["q_chunk"])

    out = sch.get_sblock("scores")
    h, i, j = sch.get_loops(out)
    jo, ji = sch.split(j, [None, HVX_KEYS])
    io, ii = sch.split(i, [None, rows])
    sch.reorder(h, io, jo, ii, ji)

    acc = sch.get_sblock("acc")
    sch.compute_at(acc, jo)
    q_bias = sch.get_sblock("q_bias")
    sch.compute_at(q_bias, io)
    q8 = sch.get_sblock("q8")
    sch.compute_at(q8, io)
    k_u8 = sch.get_sblock("k_u8")  # stays at the root: every fused head reads the one packed K
    # Per-row-block scratch (compacted to one row block by compute_at; the intrinsic takes Q words
    # and accumulators in "local"): LLVM keeps the accumulators in vector registers. K's packed
    # copy (kv_len x head_dim bytes) is the one large workspace.
    for block in (acc, q_bias, q8):
        sch.set_scope(block, 0, "local")
    # One flat loop per quantize stage: nested short loops make LLVM unroll them into several
    # copies of the division sequence (~40% more Hexagon code and compile time, no speed gain).
    # compute_at creates no unit loops, so which loops exist depends on the shape.
    _fuse(sch, sch.get_loops(k_u8))
    _fuse(sch, _loops_under(sch, q8, io)[:-1])  # rows, Q words; not the 4 bytes of a word

    # acc under jo: [rows if > 1], keys, [depth_o if head_dim > 4], depth_i. The 4-deep slice
    # goes outermost so one K vector load feeds every row's accumulator.
    acc_loops = _loops_under(sch, acc, jo)
    has_depth_o = -(-params["head_dim"] // HVX_DEPTH) > 1
    acc_keys = acc_loops[-3] if has_depth_o else acc_loops[-2]
    if has_depth_o:
        sch.reorder(acc_loops[-2], *acc_loops[:-2])
    init = sch.decompose_reduction(acc, _loops_under(sch, acc, jo)[0])
    sch.tensorize(acc_keys, VRMPY_INTRIN)
    sch.vectorize(sch.get_loops(init)[-1])
    if params["kv_len"] % HVX_KEYS == 0:  # else the last key block is partial: leave it scalar
        sch.vectorize(ji)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


__all__ = ["VRMPY_INTRIN", "register_intrinsics", "rows_per_block", "schedule_bucket_graph"]
