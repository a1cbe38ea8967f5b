"""Group top-k: one selection per (KV head, query row), shared by the KV group's query heads.

The "group" selection of the split pass (`pipeline(selection="group")`): `sparse_attention_group` then
gathers each selected K/V row once for all of the group's query heads.

    scores [B,H,Sq,Skv] int32 (or int16, see `pilot.score_shift`), ratio [Hkv] f64,
    q_scale [H] f32, k_scale [Hkv] f32[, mask [Bm,Hm,Sq,Skv]] -> idx [B,Hkv,Sq,K] int32

Ranking. Per head h of the group, the dequantised logit l_h(j) = float(S_h(j)) * deq_h
(deq_h = q_scale[h] * k_scale[kv] * scale) is compared with its row maximum m_h:
gap_h(j) = l_h(j) - m_h <= 0 (log of the key's softmax weight relative to the head's best key).
A key's group rank is max_h gap_h(j): keys any head of the group weighs near its top are kept.
Without a mask the gap is computed as float(S_h(j) - M_h) * deq_h from the integer row maximum
M_h (one rounding, bit-exact with `reference.topk_group_indices`); with one, l_h includes the
mask and a key is skipped for a head whose mask is <= MASKED_BELOW (and for the group if every
head skips it). The row keeps k = min(V, K, max(k_min, ceil(ratio[kv] * Skv))) of its V
selectable keys, ties to the lower index, ascending, -1 padded: the per-head rule
(`topk.row_selector`, same selection code) applied to the group rank; without a mask, a row whose
budget covers its visible keys writes 0..V-1 without reading its scores (-3 % at 4096 tokens,
2026-12-07). The heads' row maxima pass reads the scores from DRAM; the rank pass prefetches the
next row's into L2 (-19..23 %).
"""
from __future__ import annotations

from .._compat import EXACT_BUFFERS, T, tirx
from ..block import MASKED_BELOW, CausalMode, KVMap
from ._cache import kernel_cache
from ._isa import bcast, current_isa, prefetch, vec, vmax_all, vsum_all
from ._tasks import FETCH_ADD_IR, WORKERS, claim
from .pilot import score_shift
from .topk import INT32_MIN, float_key, keep_budget, row_selector

_ROWS = 16  # (KV head, query row) pairs per claimed task


@kernel_cache
def topk_group_indices(block, k_min: int, mask_shape=None, isa=None, score_dtype: str = "int32"):
    """PrimFunc (scores, ratio[Hkv] f64, q_scale[H], k_scale[Hkv][, mask], idx[B,Hkv,Sq,K]) -> None."""
    isa = current_isa(isa)
    has_mask = mask_shape is not None
    mask_b1 = has_mask and int(mask_shape[0]) == 1
    mask_h1 = has_mask and int(mask_shape[1]) == 1
    bottom_right = int(block.causal == CausalMode.BOTTOM_RIGHT)
    no_causal = int(block.causal == CausalMode.NONE)
    group, kv_heads, heads = block.group, block.num_kv_heads, block.num_heads
    tiled = int(block.kv_map == KVMap.TILE)
    scale = float(block.scale)
    shift = score_shift(block.head_dim) if score_dtype == "int16" else 0
    W = isa.lanes()
    build_lut, select_row, CW, WK = row_selector(isa, True, "int32")
    f32, zero64 = "float32", tirx.const(0, "int64")
    neg_inf = tirx.const(float("-inf"), f32)

    def head(hk, j):
        return hk * group + j if not tiled else j * kv_heads + hk

    def widened(S, b, h, i, j, lanes):
        s = vec(S, [b, h, i, j], lanes, "int32")
        return tirx.shift_left(s, bcast(tirx.const(shift, "int32"), lanes)) if shift else s

    def logit_gap(S, MASK, HM, HF, DQ, b, h, jh, i, j, lanes):
        """gap_h of keys j..j+lanes-1 (-inf where the head's mask skips the key)."""
        if not has_mask:
            diff = widened(S, b, h, i, j, lanes) - bcast(HM[jh], lanes)
            return tirx.Cast(f"float32x{lanes}" if lanes > 1 else f32, diff) * bcast(DQ[jh], lanes)
        m = vec(MASK, [zero64 if mask_b1 else b, zero64 if mask_h1 else h, i, j], lanes, f32)
        ok = m > bcast(tirx.const(float(MASKED_BELOW), f32), lanes)
        lg = tirx.Cast(f"float32x{lanes}" if lanes > 1 else f32, widened(S, b, h, i, j, lanes)) * bcast(DQ[jh], lanes) + m
        return tirx.Select(ok, lg - bcast(HF[jh], lanes), bcast(neg_inf, lanes))

    def group_key(gap):
        lanes = int(gap.ty.dtype.lanes)
        return tirx.Select(gap > bcast(neg_inf, lanes), float_key(gap), bcast(tirx.const(INT32_MIN, "int32"), lanes))

    @T.macro
    def head_max(S, MASK, HM, HF, DQ, b, h, jh, i, lim, iv, fm):
        """The head's maximum over its visible (valid) keys: HM[jh] the integer score (no mask),
        HF[jh] the float logit (with a mask; -inf if it has none)."""
        if has_mask:
            fm[T.Ramp(0, 1, W)] = bcast(neg_inf, W)
            for c in range(lim // W):
                m = T.Bind(vec(MASK, [zero64 if mask_b1 else b, zero64 if mask_h1 else h, i, c * W], W, f32))
                lg = T.Bind(T.Cast(f"float32x{W}", widened(S, b, h, i, c * W, W)) * bcast(DQ[jh], W) + m)
                fm[T.Ramp(0, 1, W)] = T.max(fm[T.Ramp(0, 1, W)], T.Select(m > bcast(T.float32(MASKED_BELOW), W), lg, bcast(neg_inf, W)))
            fm[0] = vmax_all(fm[T.Ramp(0, 1, W)], W)
            for j in range(lim // W * W, lim):
                m1 = T.Bind(T.Cast(f32, MASK[zero64 if mask_b1 else b, zero64 if mask_h1 else h, i, j]))
                if m1 > T.float32(MASKED_BELOW):
                    fm[0] = T.max(fm[0], T.Cast(f32, widened(S, b, h, i, j, 1)) * DQ[jh] + m1)
            HF[jh] = fm[0]
        else:
            iv[T.Ramp(0, 1, W)] = bcast(T.int32(INT32_MIN), W)
            for c in range(lim // W):
                iv[T.Ramp(0, 1, W)] = T.max(iv[T.Ramp(0, 1, W)], widened(S, b, h, i, c * W, W))
            HM[jh] = vmax_all(iv[T.Ramp(0, 1, W)], W)
            for j in range(lim // W * W, lim):
                HM[jh] = T.max(HM[jh], widened(S, b, h, i, j, 1))

    def keeps_every_key(RATIO, hk, SKV, KMAX, lim):
        """Without a mask, a row whose budget covers its visible keys keeps them all: no ranking."""
        if has_mask:
            return tirx.const(False)
        return keep_budget(RATIO[hk], SKV, KMAX, k_min) >= lim

    @T.macro
    def select_rows(S, RATIO, QS, KS, MASK, IDX):
        B, SQ, SKV, KMAX = S.shape[0], S.shape[2], S.shape[3], IDX.shape[3]
        LUT = T.alloc_buffer((1 << CW, CW + 1), "int32", scope="global")
        build_lut(LUT)
        NBLK = T.Bind((B * kv_heads * SQ + _ROWS - 1) // _ROWS)
        CNT = T.alloc_buffer((1,), "int64", scope="global")
        CNT[0] = T.int64(0)
        with T.attr(0, "pragma_import_llvm", FETCH_ADD_IR):
            for worker in T.parallel(WORKERS):
                st = T.alloc_buffer((8,), "int64", scope="global")
                iv = T.alloc_buffer((2 * W,), "int32", scope="global")
                ik = T.alloc_buffer((2 * WK,), "int32", scope="global")
                fv = T.alloc_buffer((8 * WK,), f32, scope="global")
                fm = T.alloc_buffer((W,), f32, scope="global")
                gv = T.alloc_buffer((W,), f32, scope="global")
                cnt = T.alloc_buffer((1,), "int32", scope="global")
                HM = T.alloc_buffer((group,), "int32", scope="global")
                HF = T.alloc_buffer((group,), f32, scope="global")
                DQ = T.alloc_buffer((group,), f32, scope="global")
                CB = T.alloc_buffer((SKV + CW,), "int32", scope="global")
                KR = T.alloc_buffer((SKV + W,), "int32", scope="global")
                tk = T.alloc_buffer((1,), "int64", scope="global")
                tk[0] = claim(CNT)
                while tk[0] < NBLK:
                    blk = T.Bind(tk[0])
                    for r in range(T.min(T.int64(_ROWS), B * kv_heads * SQ - blk * _ROWS)):
                        row = T.Bind(blk * _ROWS + r)
                        b = T.Bind(row // (kv_heads * SQ))
                        hk = T.Bind(row // SQ % kv_heads)
                        i = T.Bind(row % SQ)
                        lim = T.Bind(T.max(T.min(SKV, i + 1 + bottom_right * (SKV - SQ) + no_causal * SKV), T.int64(0)))
                        OUT = T.decl_buffer((KMAX,), "int32", data=IDX.data, elem_offset=row * KMAX, align=4, offset_factor=1)
                        direct = T.Bind((r + 1) * KMAX + CW <= T.min(T.int64(_ROWS), B * kv_heads * SQ - blk * _ROWS) * KMAX)
                        OUTW = T.decl_buffer((KMAX + CW,), "int32", data=IDX.data, elem_offset=row * KMAX, align=4, offset_factor=1)
                        if keeps_every_key(RATIO, hk, SKV, KMAX, lim):
                            select_row(KR, None, lim, lim, lim, LUT, CB, OUTW, OUT, direct, st, ik, fv, cnt)
                        else:
                            for jh in range(group):
                                DQ[jh] = QS[head(hk, jh)] * KS[hk] * T.float32(scale)
                                head_max(S, MASK, HM, HF, DQ, b, head(hk, jh), jh, i, lim, iv, fm)
                            # the group rank of every visible key, and how many are selectable; the next row's
                            # scores (and masks) stream from DRAM into L2 meanwhile
                            inext = T.Bind(T.min(i + 1, SQ - 1))
                            iv[T.Ramp(0, 1, W)] = bcast(T.int32(0), W)
                            for c in range(lim // W):
                                gv[T.Ramp(0, 1, W)] = bcast(neg_inf, W)
                                for jh in range(group):
                                    gap = T.Bind(logit_gap(S, MASK, HM, HF, DQ, b, head(hk, jh), jh, i, c * W, W))
                                    gv[T.Ramp(0, 1, W)] = T.max(gv[T.Ramp(0, 1, W)], gap)
                                    T.evaluate(prefetch(T.address_of(S[b, head(hk, jh), inext, c * W])))
                                    if has_mask:
                                        T.evaluate(prefetch(T.address_of(MASK[zero64 if mask_b1 else b, zero64 if mask_h1 else head(hk, jh), inext, c * W])))
                                key = T.Bind(group_key(gv[T.Ramp(0, 1, W)]))
                                KR[T.Ramp(c * W, 1, W)] = key
                                iv[T.Ramp(0, 1, W)] = iv[T.Ramp(0, 1, W)] + T.Select(key != bcast(T.int32(INT32_MIN), W), bcast(T.int32(1), W), bcast(T.int32(0), W))
                            cnt[0] = vsum_all(iv[T.Ramp(0, 1, W)], W)
                            for j in range(lim // W * W, lim):
                                gv[0] = neg_inf
                                for jh in range(group):
                                    gap1 = T.Bind(logit_gap(S, MASK, HM, HF, DQ, b, head(hk, jh), jh, i, j, 1))
                                    gv[0] = T.max(gv[0], gap1)
                                KR[j] = group_key(gv[0])
                                cnt[0] = cnt[0] + T.Cast("int32", KR[j] != T.int32(INT32_MIN))
                            nval = T.Bind(T.Cast("int64", cnt[0]))
                            select_row(KR, None, lim, T.min(keep_budget(RATIO[hk], SKV, KMAX, k_min), nval), nval, LUT, CB, OUTW, OUT, direct, st, ik,
                                       fv, cnt)
                    tk[0] = claim(CNT)

    if has_mask:

        @T.prim_func
        def topk(s_h: T.handle, r_h: T.handle, qs_h: T.handle, ks_h: T.handle, m_h: T.handle, o_h: T.handle):
            T.func_attr({"global_symbol": "sat_topk_group_masked", "tirx.noalias": True, "tirx.is_scheduled": True, EXACT_BUFFERS: True})
            B, SQ, SKV, KMAX, MB, MH = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
            S = T.match_buffer(s_h, (B, heads, SQ, SKV), score_dtype)
            RATIO = T.match_buffer(r_h, (kv_heads,), "float64")
            QS = T.match_buffer(qs_h, (heads,), f32)
            KS = T.match_buffer(ks_h, (kv_heads,), f32)
            MASK = T.match_buffer(m_h, (MB, MH, SQ, SKV), block.dtype)
            IDX = T.match_buffer(o_h, (B, kv_heads, SQ, KMAX), "int32")
            select_rows(S, RATIO, QS, KS, MASK, IDX)

    else:

        @T.prim_func
        def topk(s_h: T.handle, r_h: T.handle, qs_h: T.handle, ks_h: T.handle, o_h: T.handle):
            T.func_attr({"global_symbol": "sat_topk_group", "tirx.noalias": True, "tirx.is_scheduled": True, EXACT_BUFFERS: True})
            B, SQ, SKV, KMAX = T.int64(), T.int64(), T.int64(), T.int64()
            S = T.match_buffer(s_h, (B, heads, SQ, SKV), score_dtype)
            RATIO = T.match_buffer(r_h, (kv_heads,), "float64")
            QS = T.match_buffer(qs_h, (heads,), f32)
            KS = T.match_buffer(ks_h, (kv_heads,), f32)
            IDX = T.match_buffer(o_h, (B, kv_heads, SQ, KMAX), "int32")
            select_rows(S, RATIO, QS, KS, None, IDX)

    return topk
