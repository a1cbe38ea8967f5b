"""Top-k keys per (head, query row) of the pilot scores, as hand-written (already scheduled) TIR.

A row keeps k = min(V, K, max(k_min, ceil(ratio[h] * Skv))) of its V visible keys
(`block.keep_count`; Skv is the scores' KV length; K is the width of `idx`, so a ratio larger
than the one `idx` was sized for never writes past it): causally masked keys (by the block's
`CausalMode`) and keys whose additive mask is <= MASKED_BELOW are skipped.
Without a mask the ranking is the int32 score itself; with one it is
float(score) * q_scale[h] * k_scale[kv(h)] * scale + mask, i.e. the float logit the dense
block would rank by. Only the visible prefix of each score row is read (the pilot may leave
the causally masked part of `scores` undefined).

Selection is exact. A row's ranking is an order-preserving int32 key (the score itself, or the
logit's bits with the magnitude bits of negative values flipped, masked keys INT32_MIN); one
vectorised pass gets the key range and the mean and variance of the keys' values (scores or
logits) for a normal-quantile first guess, then a search on the threshold (each step one
vectorised count of keys >= t over the row, which stays in L1; interpolation in the values
between the bounds, every third step a bisection of the keys) finds the k-th largest key t.
(Interpolating float keys' bits, which are near-logarithmic in the value, took ~17 counts a row
in group mode, ~6-7 in the values: the group top-k 8.5 % faster at 2k-4k tokens, 2026-12-07.) The
output is one vectorised compaction pass: each chunk of keys' flags (key > t, or key == t up to
the index where the ties k needs run out: ties go to the lower index) become a bit mask that
indexes a table of lane positions, and the chunk's indices are stored at once, so indices come
out ascending. Unused slots hold -1. A row with k >= V writes 0..V-1 directly.

Vector widths come from the target (`_isa`). Rows are independent: workers claim blocks of
`_ROWS` rows one at a time (`_tasks`: a core that runs faster takes more of them) and each owns
its scratch, so the only shared state is the claim counter (the lane table is built before).
A row's first pass reads its scores from DRAM; it prefetches the next row's into L2, so that
read overlaps this row's search (2026-12-07, Zen 3 host, Qwen2 block at 1k-4k tokens: -15..22 %).
"""
from __future__ import annotations

from .._compat import EXACT_BUFFERS, T, tirx
from ..block import CEIL_EPS, MASKED_BELOW, CausalMode, KVMap
from ._cache import kernel_cache
from ._isa import bcast, current_isa, prefetch, vec, vmax_all, vmin_all, vsum_all
from ._tasks import FETCH_ADD_IR, WORKERS, claim
from .pilot import score_shift

_ROWS = 16  # rows per claimed task
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def _normal_guess(total, total_sq, n, k):
    """mean + z * std with z the upper (k/n)-quantile of N(0, 1) (Abramowitz-Stegun 26.2.23)."""
    f64 = lambda v: tirx.const(v, "float64")  # noqa: E731
    nf = n.astype("float64")
    mean = total.astype("float64") / nf
    std = tirx.sqrt(tirx.max(total_sq.astype("float64") / nf - mean * mean, f64(0.0)))
    p = k.astype("float64") / nf
    tail = tirx.max(tirx.min(p, f64(1.0) - p), f64(1e-12))
    t = tirx.sqrt(f64(-2.0) * tirx.log(tail))
    z = t - (f64(2.515517) + t * (f64(0.802853) + t * f64(0.010328))) / (
        f64(1.0) + t * (f64(1.432788) + t * (f64(0.189269) + t * f64(0.001308))))
    return mean + tirx.Select(p <= f64(0.5), z, -z) * std


def _flip(bits):
    """Flip the magnitude bits of negative int32s: float bits <-> order-preserving keys (an involution)."""
    lanes = int(bits.ty.dtype.lanes)
    i32 = lambda x: bcast(tirx.const(x, "int32"), lanes) if lanes > 1 else tirx.const(x, "int32")  # noqa: E731
    return tirx.bitwise_xor(bits, tirx.bitwise_and(tirx.shift_right(bits, i32(31)), i32(0x7FFFFFFF)))


def float_key(value):
    """Order-preserving int32 key of a float32 (signed int order == float order)."""
    lanes = int(value.ty.dtype.lanes)
    return _flip(tirx.reinterpret(f"int32x{lanes}" if lanes > 1 else "int32", value))


def key_value(key):
    """The float32 whose `float_key` is `key` (int32)."""
    lanes = int(key.ty.dtype.lanes)
    return tirx.reinterpret(f"float32x{lanes}" if lanes > 1 else "float32", _flip(key))


def keep_budget(ratio, skv, kmax, k_min: int):
    """min(K, max(k_min, ceil(ratio * Skv))) as int64 (the visible-count bound is the caller's)."""
    return T.min(kmax, T.max(T.int64(k_min), T.Cast("int64", T.ceil(ratio * T.Cast("float64", skv) - CEIL_EPS))))


def row_selector(isa, masked: bool, key_dtype: str = "int32"):
    """Macros shared by the per-head and the group top-k: `build_lut` (before the parallel loop)
    and `select_row`, which writes the top `kk` of the keys X[0:lim] (int32 or int16; nval of them
    valid, invalid ones INT32_MIN when `masked`) to OUT[0:KMAX] as ascending indices, -1 padded.
    The compaction writes whole chunks, up to CW - 1 slots past the last index: into CB, a scratch
    row then copied to OUT, or (`direct`) into OUT itself (the view OUTW), when the CW slots after
    OUT belong to later rows of the same task, which overwrite them afterwards.
    Scratch: st int64[8], ik key_dtype[2 WK], fv float32[8 WK], cnt int32[1] (WK = key lanes)."""
    W = isa.lanes()
    WK = isa.lanes(int(key_dtype[3:]))  # lanes of the range and count passes
    CW = min(W, 8)  # compaction chunk: its flag mask indexes a 2^CW x CW table
    # per-lane counts of int16 keys are int16: sum them every 4096 vectors
    CBLK = 4096 if key_dtype == "int16" else 1 << 30
    kd = key_dtype
    imin, imax = tirx.const(INT32_MIN, "int32"), tirx.const(INT32_MAX, "int32")
    kmin_, kmax_ = (imin, imax) if kd == "int32" else (tirx.const(-32768, kd), tirx.const(32767, kd))
    lane_bits = tirx.shift_left(bcast(tirx.const(1, "int32"), CW), tirx.Ramp(tirx.const(0, "int32"), 1, CW))
    x86_mask = {("avx2", 8): "llvm.x86.avx.movmsk.ps.256", ("avx512", 8): "llvm.x86.avx.movmsk.ps.256",
                ("sse", 4): "llvm.x86.sse.movmsk.ps"}.get((isa.name, CW))

    def bits_of(flags):
        """The lanes' flags as the bits of an int32 (movmskps on x86; an or-reduction elsewhere)."""
        if x86_mask is not None:
            ones = tirx.Select(flags, bcast(tirx.const(-1, "int32"), CW), bcast(tirx.const(0, "int32"), CW))
            return tirx.call_llvm_pure_intrin("int32", x86_mask, tirx.reinterpret(f"float32x{CW}", ones))
        return vsum_all(tirx.Select(flags, lane_bits, bcast(tirx.const(0, "int32"), CW)), CW)

    def value_of(key):
        """A key's value as float32: the score, or (masked) the float whose `float_key` it is."""
        return key_value(T.Cast("int32", key)) if masked else T.Cast("float32", key)

    def key_of(value):
        """The int64 key nearest a float64 value (a search guess; any key is a valid guess)."""
        if masked:
            return T.Cast("int64", float_key(T.Cast("float32", value)))
        return T.Cast("int64", T.round(T.max(T.min(value, T.float64(2.0 ** 31)), T.float64(-(2.0 ** 31)))))

    def interpolate(lo, hi, span, frac):
        """The key `frac` of the way from key lo up to key hi, linear in their values."""
        if masked:
            vlo, vhi = (T.Cast("float64", value_of(key)) for key in (lo, hi))
            return key_of(vlo + (vhi - vlo) * frac)
        return lo + T.Cast("int64", T.Cast("float64", span) * frac)

    @T.macro
    def build_lut(LUT):
        for m in range(1 << CW):
            for e in range(CW):
                LUT[m, e] = 0
            LUT[m, CW] = 0  # slot counter while building
            for e in range(CW):
                if T.bitwise_and(T.shift_right(m, e), 1) == 1:
                    LUT[m, LUT[m, CW]] = e
                    LUT[m, CW] = LUT[m, CW] + 1

    @T.macro
    def count_ge(X, lim, mid, ik, out):
        """out[0] = count(X[0:lim] >= mid), vectorised."""
        out[0] = 0
        nvec = T.Bind(lim // WK)
        for cb in range((nvec + CBLK - 1) // CBLK):
            ik[T.Ramp(0, 1, WK)] = bcast(T.Cast(kd, 0), WK)
            for c in range(cb * CBLK, T.min(nvec, cb * CBLK + CBLK)):
                ik[T.Ramp(0, 1, WK)] = ik[T.Ramp(0, 1, WK)] + T.Select(vec(X, [c * WK], WK) >= bcast(mid, WK), bcast(T.Cast(kd, 1), WK), bcast(T.Cast(kd, 0), WK))
            out[0] = out[0] + vsum_all(T.Cast(f"int32x{WK}", ik[T.Ramp(0, 1, WK)]), WK)
        for j in range(nvec * WK, lim):
            out[0] = out[0] + T.Cast("int32", X[j] >= mid)

    @T.macro
    def compact_ge(X, j0, j1, thr, LUT, CB, slot):
        """Append to CB[slot:] the ascending j in [j0, j1) with X[j] >= thr."""
        for c in range((j1 - j0) // CW):
            m = T.Bind(bits_of(vec(X, [j0 + c * CW], CW, "int32") >= bcast(thr, CW)))
            CB[T.Ramp(slot[0], 1, CW)] = vec(LUT, [m, 0], CW) + bcast(T.Cast("int32", j0 + c * CW), CW)
            slot[0] = slot[0] + T.popcount(m)
        for j in range(j0 + (j1 - j0) // CW * CW, j1):
            CB[slot[0]] = T.Cast("int32", j)
            slot[0] = slot[0] + T.Cast("int32", T.Cast("int32", X[j]) >= thr)

    @T.macro
    def range_step(X, NX, j, u, ik, fv):
        """One vector of the range pass: min/max of the (valid) keys, partial sums u; and a prefetch
        of the same place in the next row NX (None: the caller prefetches)."""
        xv = T.Bind(vec(X, [j], WK))
        if NX is not None:
            T.evaluate(prefetch(T.address_of(NX[j])))
        if masked:
            valid = xv != bcast(kmin_, WK)
            ik[T.Ramp(0, 1, WK)] = T.min(ik[T.Ramp(0, 1, WK)], T.Select(valid, xv, bcast(kmax_, WK)))
            xf = T.Bind(T.Select(valid, key_value(xv), bcast(T.float32(0), WK)))
        else:
            ik[T.Ramp(0, 1, WK)] = T.min(ik[T.Ramp(0, 1, WK)], xv)
            xf = T.Bind(T.Cast(f"float32x{WK}", xv))
        fv[T.Ramp(u * WK, 1, WK)] = fv[T.Ramp(u * WK, 1, WK)] + xf
        fv[T.Ramp((4 + u) * WK, 1, WK)] = fv[T.Ramp((4 + u) * WK, 1, WK)] + xf * xf
        ik[T.Ramp(WK, 1, WK)] = T.max(ik[T.Ramp(WK, 1, WK)], xv)

    @T.macro
    def select_row(X, NX, lim, kk, nval, LUT, CB, OUTW, OUT, direct, st, ik, fv, cnt):
        # st: 0 lo, 1 hi, 2 count(X >= lo), 3 count(X > hi), 4 jcut, 5 ties still needed
        KMAX = OUT.shape[0]
        if kk >= lim:  # every visible key (then nval == lim)
            for c in range(kk // W):
                OUT[T.Ramp(c * W, 1, W)] = T.Ramp(T.Cast("int32", c * W), 1, W)
            for j in range(kk // W * W, kk):
                OUT[j] = T.Cast("int32", j)
            cnt[0] = T.Cast("int32", kk)
        elif kk > 0:
            # range of the valid keys, and sums of their values for the first guess: four partial
            # sums each, so the float adds' latency hides behind the loads
            ik[T.Ramp(0, 1, WK)] = bcast(kmax_, WK)
            ik[T.Ramp(WK, 1, WK)] = bcast(kmin_, WK)
            for u in T.unroll(8):
                fv[T.Ramp(u * WK, 1, WK)] = bcast(T.float32(0), WK)
            for c4 in range(lim // (4 * WK)):
                for u in T.unroll(4):
                    range_step(X, NX, (c4 * 4 + u) * WK, u, ik, fv)
            for c in range(lim // (4 * WK) * 4, lim // WK):
                range_step(X, NX, c * WK, 0, ik, fv)
            st[0] = T.Cast("int64", vmin_all(ik[T.Ramp(0, 1, WK)], WK))
            st[1] = T.Cast("int64", vmax_all(ik[T.Ramp(WK, 1, WK)], WK))
            fv[0] = vsum_all((fv[T.Ramp(0, 1, WK)] + fv[T.Ramp(WK, 1, WK)]) + (fv[T.Ramp(2 * WK, 1, WK)] + fv[T.Ramp(3 * WK, 1, WK)]), WK)
            fv[1] = vsum_all((fv[T.Ramp(4 * WK, 1, WK)] + fv[T.Ramp(5 * WK, 1, WK)]) + (fv[T.Ramp(6 * WK, 1, WK)] + fv[T.Ramp(7 * WK, 1, WK)]), WK)
            for j in range(lim // WK * WK, lim):
                if not masked or X[j] != kmin_:
                    st[0] = T.min(st[0], T.Cast("int64", X[j]))
                    fv[0] = fv[0] + value_of(X[j])
                    fv[1] = fv[1] + value_of(X[j]) * value_of(X[j])
                st[1] = T.max(st[1], T.Cast("int64", X[j]))
            st[2] = nval
            st[3] = T.int64(0)
            # invariant count(X >= lo) >= kk > count(X > hi); guesses interpolate the count linearly
            # between the bounds, bisection steps interleaved so the worst case stays logarithmic
            st[7] = T.int64(0)
            st[5] = kk  # through memory: with kk an expression of nval, TVM 0.27's codegen fails here (float64 IntImm)
            st[6] = key_of(_normal_guess(fv[0], fv[1], nval, st[5]))
            while st[0] < st[1] and st[2] > kk:
                step = T.Bind(st[7])
                st[7] = st[7] + 1
                span = T.Bind(st[1] - st[0] + T.int64(1))
                guess = T.Bind(interpolate(st[0], st[1], span, (T.Cast("float64", st[2] - kk) + T.float64(0.5)) / T.Cast("float64", st[2] - st[3])))
                mid = T.Bind(T.Select(step % 3 == 2, st[0] + T.shift_right(span, T.int64(1)), T.min(T.max(T.Select(step == 0, st[6], guess), st[0] + T.int64(1)), st[1])))
                count_ge(X, lim, T.Cast(kd, mid), ik, cnt)
                if T.Cast("int64", cnt[0]) >= kk:
                    st[0] = mid
                    st[2] = T.Cast("int64", cnt[0])
                    if T.Cast("int64", cnt[0]) == kk:
                        st[1] = mid
                else:
                    st[1] = mid - T.int64(1)
                    st[3] = T.Cast("int64", cnt[0])
            # t = lo; keys == t are taken in index order up to the (kk - count(> t))-th
            st[4] = T.int64(INT32_MAX)
            if st[2] > kk:
                # ties at t: whole chunks of WK keys while they hold fewer ties than still needed,
                # then key by key
                st[5] = kk - st[3]
                st[4] = T.int64(0)
                st[6] = T.int64(0)
                while st[4] + WK <= lim and st[6] < st[5]:
                    st[6] = T.Cast("int64", vsum_all(T.Select(vec(X, [st[4]], WK) == bcast(T.Cast(kd, st[0]), WK), bcast(T.int32(1), WK), bcast(T.int32(0), WK)), WK))
                    if st[6] < st[5]:
                        st[5] = st[5] - st[6]
                        st[4] = st[4] + WK
                st[4] = st[4] - 1
                while st[5] > 0:
                    st[4] = st[4] + 1
                    if T.Cast("int64", X[st[4]]) == st[0]:
                        st[5] = st[5] - 1
            # keys > t everywhere, keys == t up to jcut: two ">=" compactions split at jcut
            cnt[0] = 0
            jc = T.Bind(T.min(st[4] + 1, lim))
            if direct:
                compact_ge(X, T.int64(0), jc, T.Cast("int32", st[0]), LUT, OUTW, cnt)
                if st[0] < T.int64(INT32_MAX):
                    compact_ge(X, jc, lim, T.Cast("int32", st[0] + 1), LUT, OUTW, cnt)
            else:
                compact_ge(X, T.int64(0), jc, T.Cast("int32", st[0]), LUT, CB, cnt)
                if st[0] < T.int64(INT32_MAX):
                    compact_ge(X, jc, lim, T.Cast("int32", st[0] + 1), LUT, CB, cnt)
                for c in range(kk // W):
                    OUT[T.Ramp(c * W, 1, W)] = CB[T.Ramp(c * W, 1, W)]
                for j in range(kk // W * W, kk):
                    OUT[j] = CB[j]
            cnt[0] = T.Cast("int32", kk)
        else:
            cnt[0] = 0
        for j in range(T.Cast("int64", cnt[0]), KMAX):
            OUT[j] = -1

    return build_lut, select_row, CW, WK


@kernel_cache
def topk_indices(block, k_min: int, mask_shape=None, isa=None, score_dtype: str = "int32"):
    """PrimFunc (scores, ratio[H] f64[, q_scale[H], k_scale[Hkv], mask], idx) -> None.

    score_dtype "int16": the pilot's `pilot_scores(..., out_dtype="int16")` scores s16 = s32 >> shift;
    the ranking is that of s16 << shift (the int32 rule applied to them; see `pilot.score_shift`)."""
    isa = current_isa(isa)
    shift = score_shift(block.head_dim) if score_dtype == "int16" else 0
    has_mask = mask_shape is not None
    mask_b1 = has_mask and int(mask_shape[0]) == 1
    mask_h1 = has_mask and int(mask_shape[1]) == 1
    bottom_right = int(block.causal == CausalMode.BOTTOM_RIGHT)
    no_causal = int(block.causal == CausalMode.NONE)
    group, kv_heads = block.group, block.num_kv_heads
    tiled = int(block.kv_map == KVMap.TILE)
    scale, masked_below = float(block.scale), float(MASKED_BELOW)
    zero64 = tirx.const(0, "int64")
    W = isa.lanes()
    build_lut, select_row, CW, WK = row_selector(isa, has_mask, "int32" if has_mask else score_dtype)

    def mval(MASK, b, h, i, j, lanes):
        return vec(MASK, [zero64 if mask_b1 else b, zero64 if mask_h1 else h, i, j], lanes, "float32")

    def masked_key(S, MASK, deq, b, h, i, j, lanes):
        """(key, valid) of keys j..j+lanes-1: the logit's order-preserving key, INT32_MIN if masked."""
        m = mval(MASK, b, h, i, j, lanes)
        score = vec(S, [b, h, i, j], lanes, "int32")
        if shift:
            score = tirx.shift_left(score, bcast(tirx.const(shift, "int32"), lanes))
        logit = tirx.Cast(f"float32x{lanes}" if lanes > 1 else "float32", score) * bcast(deq, lanes) + m
        ok = m > bcast(tirx.const(masked_below, "float32"), lanes)
        return tirx.Select(ok, float_key(logit), bcast(tirx.const(INT32_MIN, "int32"), lanes)), ok

    @T.macro
    def select_rows(S, RATIO, QS, KS, MASK, IDX):
        B, H, SQ, SKV, KMAX = S.shape[0], S.shape[1], S.shape[2], S.shape[3], IDX.shape[3]
        LUT = T.alloc_buffer((1 << CW, CW + 1), "int32", scope="global")
        build_lut(LUT)
        NBLK = T.Bind((B * H * SQ + _ROWS - 1) // _ROWS)
        CNT = T.alloc_buffer((1,), "int64", scope="global")
        CNT[0] = T.int64(0)
        with T.attr(0, "pragma_import_llvm", FETCH_ADD_IR):
            for worker in T.parallel(WORKERS):
                # "global" scope: small per-worker stack buffers (TVM 0.27 lowers "local" ones to
                # workspace calls that LLVM cannot keep in registers)
                st = T.alloc_buffer((8,), "int64", scope="global")
                iv = T.alloc_buffer((2 * W,), "int32", scope="global")
                ik = T.alloc_buffer((2 * WK,), "int32" if has_mask else score_dtype, scope="global")
                fv = T.alloc_buffer((8 * WK,), "float32", scope="global")
                cnt = T.alloc_buffer((1,), "int32", scope="global")
                CB = T.alloc_buffer((SKV + CW,), "int32", scope="global")
                KR = T.alloc_buffer((SKV + W,) if has_mask else (1,), "int32", scope="global")
                tk = T.alloc_buffer((1,), "int64", scope="global")
                tk[0] = claim(CNT)
                while tk[0] < NBLK:
                    blk = T.Bind(tk[0])
                    for r in range(T.min(T.int64(_ROWS), B * H * SQ - blk * _ROWS)):
                        row = T.Bind(blk * _ROWS + r)
                        b = T.Bind(row // (H * SQ))
                        h = T.Bind(row // SQ % H)
                        i = T.Bind(row % SQ)
                        lim = T.Bind(T.max(T.min(SKV, i + 1 + bottom_right * (SKV - SQ) + no_causal * SKV), T.int64(0)))
                        OUT = T.decl_buffer((KMAX,), "int32", data=IDX.data, elem_offset=row * KMAX, align=4, offset_factor=1)
                        direct = T.Bind((r + 1) * KMAX + CW <= T.min(T.int64(_ROWS), B * H * SQ - blk * _ROWS) * KMAX)
                        OUTW = T.decl_buffer((KMAX + CW,), "int32", data=IDX.data, elem_offset=row * KMAX, align=4, offset_factor=1)
                        budget = T.Bind(keep_budget(RATIO[h], SKV, KMAX, k_min))
                        # the next row's scores (and mask row) stream from DRAM into L2 while this row is ranked
                        NS = T.decl_buffer((SKV,), score_dtype, data=S.data, elem_offset=T.min(row + 1, B * H * SQ - 1) * SKV, align=2, offset_factor=1)
                        if has_mask:
                            inext = T.Bind(T.min(i + 1, SQ - 1))
                            deq = T.Bind(QS[h] * KS[(1 - tiled) * (h // group) + tiled * (h % kv_heads)] * T.float32(scale))
                            iv[T.Ramp(0, 1, W)] = bcast(T.int32(0), W)
                            for c in range(lim // W):
                                key, ok = masked_key(S, MASK, deq, b, h, i, c * W, W)
                                T.evaluate(prefetch(T.address_of(NS[c * W])))
                                T.evaluate(prefetch(T.address_of(MASK[zero64 if mask_b1 else b, zero64 if mask_h1 else h, inext, c * W])))
                                KR[T.Ramp(c * W, 1, W)] = key
                                iv[T.Ramp(0, 1, W)] = iv[T.Ramp(0, 1, W)] + T.Cast(f"int32x{W}", ok)
                            cnt[0] = vsum_all(iv[T.Ramp(0, 1, W)], W)
                            for j in range(lim // W * W, lim):
                                key1, ok1 = masked_key(S, MASK, deq, b, h, i, j, 1)
                                KR[j] = key1
                                cnt[0] = cnt[0] + T.Cast("int32", ok1)
                            nval = T.Bind(T.Cast("int64", cnt[0]))
                            select_row(KR, None, lim, T.min(budget, nval), nval, LUT, CB, OUTW, OUT, direct, st, ik, fv, cnt)
                        else:
                            X = T.decl_buffer((SKV,), score_dtype, data=S.data, elem_offset=row * SKV, align=2, offset_factor=1)
                            select_row(X, NS, lim, T.min(budget, lim), lim, LUT, CB, OUTW, OUT, direct, st, ik, fv, cnt)
                    tk[0] = claim(CNT)

    return topk_func(select_rows, block, has_mask, score_dtype)


def topk_func(select_rows, block, has_mask: bool, score_dtype: str = "int32"):
    """The top-k PrimFunc (scores, ratio[H] f64[, q_scale[H], k_scale[Hkv], mask], idx) around a
    row-selection macro `select_rows(S, RATIO, QS, KS, MASK, IDX)`; the CPU and Adreno kernels share it."""
    group = block.group
    if has_mask:

        @T.prim_func
        def topk(s_h: T.handle, r_h: T.handle, qs_h: T.handle, ks_h: T.handle, m_h: T.handle, o_h: T.handle):
            T.func_attr({"global_symbol": "sat_topk_masked", "tirx.noalias": True, "tirx.is_scheduled": True, EXACT_BUFFERS: True})
            B, H, SQ, SKV, KMAX, MB, MH = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
            S = T.match_buffer(s_h, (B, H, SQ, SKV), score_dtype)
            RATIO = T.match_buffer(r_h, (H,), "float64")
            QS = T.match_buffer(qs_h, (H,), "float32")
            KS = T.match_buffer(ks_h, (H // group,), "float32")
            MASK = T.match_buffer(m_h, (MB, MH, SQ, SKV), block.dtype)
            IDX = T.match_buffer(o_h, (B, H, SQ, KMAX), "int32")
            select_rows(S, RATIO, QS, KS, MASK, IDX)

    else:

        @T.prim_func
        def topk(s_h: T.handle, r_h: T.handle, o_h: T.handle):
            T.func_attr({"global_symbol": "sat_topk", "tirx.noalias": True, "tirx.is_scheduled": True, EXACT_BUFFERS: True})
            B, H, SQ, SKV, KMAX = T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
            S = T.match_buffer(s_h, (B, H, SQ, SKV), score_dtype)
            RATIO = T.match_buffer(r_h, (H,), "float64")
            IDX = T.match_buffer(o_h, (B, H, SQ, KMAX), "int32")
            select_rows(S, RATIO, None, None, None, IDX)

    return topk
