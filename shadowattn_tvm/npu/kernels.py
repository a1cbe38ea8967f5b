"""Kernels of the NPU lane on the host: the staging copy and the host twin of a bucket graph.

* `stage_inputs`: copies one launch's inputs into the graph's static buffers: the Q rows of
  the fused heads ([fused, q_rows, D], rows past the chunk zeroed) and the group's K head once
  ([kv_len, D], keys past the sequence zeroed), as `bucket_graph` takes them. On a phone this
  is the copy into the graph's shared input buffers; here it runs on the NPU lane. One kernel
  serves every launch (symbolic shapes, the unit as scalars).
* `host_twin`: `bucket_graph` (the same TIR the Hexagon build compiles) with a host schedule:
  K's int8 copy (one, shared by the fused heads) is laid out [D, kv_len] so the inner loop runs
  over contiguous keys, 4 query rows x 32 keys of int32 accumulators per tile, d outermost
  inside the tile.
"""
from __future__ import annotations

from .._compat import T, fast_script_parsing, s_tir
from .buckets import BucketSpec

_ROWS = 4  # query rows per tile of the twin
_KEYS = (32, 16, 8)  # key vector widths tried, widest first


@fast_script_parsing()
def stage_inputs(dtype: str, head_dim: int):
    """PrimFunc (q [B,H,Sq,D], k [B,Hkv,Skv,D], q_buf [F,QR,D], k_buf [KV,D],
    b, head0, head_stride, kv_head, row0, rows, kv_valid) -> None."""
    D = int(head_dim)

    @T.prim_func
    def stage(q_h: T.handle, k_h: T.handle, qb_h: T.handle, kb_h: T.handle, b: T.int64, head0: T.int64,
              head_stride: T.int64, kv_head: T.int64, row0: T.int64, rows: T.int64, kv_valid: T.int64):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        B, H, SQ, HKV, SKV, F, QR, KV = (T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64(),
                                         T.int64(), T.int64())
        Q = T.match_buffer(q_h, (B, H, SQ, D), dtype)
        K = T.match_buffer(k_h, (B, HKV, SKV, D), dtype)
        QB = T.match_buffer(qb_h, (F, QR, D), dtype)
        KB = T.match_buffer(kb_h, (KV, D), dtype)
        for f, r in T.grid(F, QR):
            if r < rows:
                for d in T.vectorized(D):
                    QB[f, r, d] = Q[b, head0 + f * head_stride, row0 + r, d]
            else:
                for d in T.vectorized(D):
                    QB[f, r, d] = T.Cast(dtype, 0)
        for j in range(KV):
            if j < kv_valid:
                for d in T.vectorized(D):
                    KB[j, d] = K[b, kv_head, j, d]
            else:
                for d in T.vectorized(D):
                    KB[j, d] = T.Cast(dtype, 0)

    return stage.without_attr("global_symbol")


@fast_script_parsing()
def gather_rows(dtype: str, fill: float = 0.0):
    """PrimFunc (x [B,H,S,C0], b, head0, head_stride, row0, rows, cols, out [1,F,R,C]) -> None:

        out[0, f, r, c] = x[b, head0 + f * head_stride, row0 + r, c]   if r < rows and c < cols
                        = fill                                          otherwise

    The CPU lane's slicing of one launch unit (its heads' Q rows, its KV head's K/V keys, its
    mask tile) as one shape-generic kernel: the unit comes in as scalar arguments (PrimValues of
    the call_tir), so a block compiles one gather, not a slice and a pad per unit.
    """

    @T.prim_func(s_tir=True)  # with a root block: RewriteDataflowReshape inspects one-input kernels
    def gather(x_h: T.handle, b: T.int64, head0: T.int64, head_stride: T.int64, row0: T.int64, rows: T.int64,
               cols: T.int64, o_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        B, H, S, C0, F, R, C = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
        X = T.match_buffer(x_h, (B, H, S, C0), dtype)
        OUT = T.match_buffer(o_h, (T.int64(1), F, R, C), dtype)
        with T.sblock("root"):
            for f, r in T.grid(F, R):
                if r < rows:
                    for c in range(cols):
                        OUT[0, f, r, c] = X[b, head0 + f * head_stride, row0 + r, c]
                    for c in range(C - cols):
                        OUT[0, f, r, cols + c] = T.Cast(dtype, fill)
                else:
                    for c in range(C):
                        OUT[0, f, r, c] = T.Cast(dtype, fill)

    return gather.without_attr("global_symbol")


def host_twin(spec: BucketSpec):
    """The bucket graph of `spec`, scheduled for a host CPU (one thread; no parallel loops:
    the NPU lane is one core)."""
    func = spec.prim_func()
    sch = s_tir.Schedule(func)
    q8, k8, scores = (sch.get_sblock(name) for name in ("q8", "k8", "scores"))
    keys = next((w for w in _KEYS if spec.kv_len % w == 0), None)
    for blk in (q8, k8):
        if spec.head_dim % 8 == 0:
            sch.vectorize(sch.get_loops(blk)[-1])
    h, i, j, rd = sch.get_loops(scores)
    if keys is not None:
        sch.transform_layout(k8, ("write", 0), lambda s, d: (d, s))
        rows = _ROWS if spec.q_rows % _ROWS == 0 else 1
        io, ii = sch.split(i, [None, rows])
        jo, ji = sch.split(j, [None, keys])
        sch.reorder(h, io, jo, rd, ii, ji)
        sch.unroll(ii)
        sch.vectorize(ji)
        init = sch.decompose_reduction(scores, rd)
        sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)


__all__ = ["stage_inputs", "host_twin"]
