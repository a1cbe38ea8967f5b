"""The pilot: int8 Q·Kᵀ with int32 accumulation, no softmax and no mask (an NPU graph's job).

q8 [B,H,Sq,D] int8, k8t [B,Hkv,D,Skv] int8 (from `quantize(..., transpose=True)`) ->
scores [B,H,Sq,Skv] int32. GQA reads the KV head through `kv_head`, never a repeated copy.

Causal blocks: only each row's visible prefix (by the block's `CausalMode`, as top-k defines
it) is guaranteed; the causally masked part of a row is partly computed and partly left
unwritten, i.e. undefined. Top-k never reads it. Without a causal mode every score is written.

Hand-written, already scheduled TIR: a task (claimed by a worker, `_tasks`; the last rows first)
owns a tile of 4 query rows of one head and walks blocks of JV key columns (two int32 vectors of
the target, `_isa`: 16 on AVX2, 8 on NEON) up to the tile's last visible key; the 4 x JV int32
accumulators stay in registers while d runs, each k vector (JV int8 widened) is reused by the 4
rows.

``out_dtype="int16"`` (CPU lanes only: the NPU graphs and the Hexagon lane produce int32) writes
s32 >> `score_shift(D)`, which fits int16 for any int8 operands, and halves the bytes top-k reads;
`topk_indices(..., score_dtype="int16")` ranks them as s16 << shift.
"""
from __future__ import annotations

import math

from .._compat import EXACT_BUFFERS, T
from ..block import CausalMode, KVMap
from ._cache import kernel_cache
from ._isa import current_isa
from ._shapes import fresh_shape
from ._tasks import FETCH_ADD_IR, WORKERS, claim

_RI = 4  # query rows per tile


def score_shift(head_dim: int) -> int:
    """The right shift that fits every int8 Q·Kᵀ of `head_dim` terms (|s| <= D * 127²) into int16."""
    return max(0, math.ceil(math.log2(int(head_dim) * 127 * 127 / 32767)))


@kernel_cache
def pilot_scores(block, q_shape, kv_len, out_dtype: str = "int32", isa=None):
    fresh_shape(q_shape, ("batch", "heads", "q_len", "head_dim"))  # validates the dims
    if out_dtype not in ("int32", "int16"):
        raise ValueError(f"pilot scores are int32 or int16, not {out_dtype}")
    shift = score_shift(block.head_dim) if out_dtype == "int16" else 0
    _JV = 2 * current_isa(isa).lanes()
    bottom_right = int(block.causal == CausalMode.BOTTOM_RIGHT)
    no_causal = int(block.causal == CausalMode.NONE)
    group, kv_heads = block.group, block.num_kv_heads
    tiled = int(block.kv_map == KVMap.TILE)
    RI, JV = _RI, _JV

    def narrow(x):
        return x if not shift else T.Cast(out_dtype, T.shift_right(x, shift))

    def kvh(h):
        if group == 1:
            return h
        return (1 - tiled) * (h // group) + tiled * (h % kv_heads)

    @T.macro
    def rows_tile(Q8, K8T, OUT, b, h, hk, i0, nrows, lim, SKV, D):
        # nrows (static) rows starting at i0, key columns [0, lim) rounded up to whole blocks
        acc = T.alloc_buffer((nrows, JV), "int32", scope="global")
        for jt in range((lim + JV - 1) // JV):
            if (jt + 1) * JV <= SKV:
                for r in T.unroll(nrows):
                    for jj in T.vectorized(JV):
                        acc[r, jj] = 0
                for d in range(D):
                    for r in T.unroll(nrows):
                        for jj in T.vectorized(JV):
                            acc[r, jj] = acc[r, jj] + T.Cast("int32", Q8[b, h, i0 + r, d]) * T.Cast("int32", K8T[b, hk, d, jt * JV + jj])
                for r in T.unroll(nrows):
                    for jj in T.vectorized(JV):
                        OUT[b, h, i0 + r, jt * JV + jj] = narrow(acc[r, jj])
            else:
                # ragged last block (Skv not a multiple of JV): scalar
                for r in range(nrows):
                    for j in range(SKV - jt * JV):
                        acc[0, 0] = 0
                        for d in range(D):
                            acc[0, 0] = acc[0, 0] + T.Cast("int32", Q8[b, h, i0 + r, d]) * T.Cast("int32", K8T[b, hk, d, jt * JV + j])
                        OUT[b, h, i0 + r, jt * JV + j] = narrow(acc[0, 0])

    @T.prim_func
    def pilot(q_h: T.handle, k_h: T.handle, o_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, EXACT_BUFFERS: True})
        B, H, SQ, SKV, D = T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
        Q8 = T.match_buffer(q_h, (B, H, SQ, D), "int8")
        K8T = T.match_buffer(k_h, (B, kv_heads, D, SKV), "int8")
        OUT = T.match_buffer(o_h, (B, H, SQ, SKV), out_dtype)
        NT = T.Bind((SQ + RI - 1) // RI)
        NTASK = T.Bind(B * H * NT)
        CNT = T.alloc_buffer((1,), "int64", scope="global")
        CNT[0] = T.int64(0)
        with T.attr(0, "pragma_import_llvm", FETCH_ADD_IR):
            for worker in T.parallel(WORKERS):
                tk = T.alloc_buffer((1,), "int64", scope="global")
                tk[0] = claim(CNT)
                while tk[0] < NTASK:
                    task = T.Bind(tk[0])
                    b = T.Bind(task // (H * NT))
                    h = T.Bind(task // NT % H)
                    i0 = T.Bind((NT - 1 - task % NT) * RI)  # the last (longest) rows first
                    hk = T.Bind(kvh(h))
                    # keys visible to the tile's last row (rows see nested prefixes)
                    last = T.Bind(T.min(i0 + RI, SQ) - 1)
                    lim = T.Bind(T.max(T.min(SKV, last + 1 + bottom_right * (SKV - SQ) + no_causal * SKV), T.int64(0)))
                    if i0 + RI <= SQ:
                        rows_tile(Q8, K8T, OUT, b, h, hk, i0, RI, lim, SKV, D)
                    else:
                        for r in range(SQ - i0):
                            rows_tile(Q8, K8T, OUT, b, h, hk, i0 + r, 1, lim, SKV, D)
                    tk[0] = claim(CNT)

    return pilot.without_attr("global_symbol")
