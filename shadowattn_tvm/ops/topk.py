"""Top-k keys per (head, query row) of the pilot scores, as hand-written (already scheduled) TIR.

A row keeps k = min(V, K, max(k_min, ceil(ratio[h] * Skv))) of its V visible keys
(`block.keep_count`; Skv is the scores' KV length; K is the width of `idx`, so a ratio larger
than the one `idx` was sized for never writes past it): causally masked keys (by the block's
`CausalMode`) and keys whose additive mask is <= MASKED_BELOW are skipped.
Without a mask the ranking is the int32 score itself; with one it is
float(score) * q_scale[h] * k_scale[kv(h)] * scale + mask, i.e. the float logit the dense
block would rank by. Only the visible prefix of each score row is read (the pilot may leave
the causally masked part of `scores` undefined).

Selection is exact: each row's ranking is mapped to an order-preserving int32 key, a vectorised
pass finds the key range [min, max], and a bisection on the threshold value (each step one
vectorised count of keys >= t over the row, which stays in L1) finds the k-th largest key t.
Keys > t are kept, keys == t fill the remaining slots in index order (ties go to the lower key
index), and indices are written in ascending order (gathers then walk K/V forwards); unused
slots hold -1.

Rows are independent and each owns its scratch, so the parallel row loop has no shared state.
"""
from __future__ import annotations

from .._compat import T, tirx
from ..block import CEIL_EPS, MASKED_BELOW, CausalMode, KVMap

_ROWS = 16  # rows per parallel task


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


def topk_indices(block, k_min: int, mask_shape=None):
    """PrimFunc (scores, ratio[H] f64[, q_scale[H], k_scale[Hkv], mask], idx) -> None."""
    has_mask = mask_shape is not None
    mask_b1 = has_mask and int(mask_shape[0]) == 1
    mask_h1 = has_mask and int(mask_shape[1]) == 1
    # Visible prefix of a row: min(Skv, i + 1 + br * (Skv - Sq) + none * Skv), clamped at 0.
    bottom_right = int(block.causal == CausalMode.BOTTOM_RIGHT)
    no_causal = int(block.causal == CausalMode.NONE)
    group, kv_heads = block.group, block.num_kv_heads
    tiled = int(block.kv_map == KVMap.TILE)
    scale, kmin, masked_below, eps = float(block.scale), int(k_min), float(MASKED_BELOW), CEIL_EPS
    i32 = lambda x: tirx.const(x, "int32")  # noqa: E731
    zero64 = tirx.const(0, "int64")

    def mval(MASK, b, h, i, j):
        return MASK[zero64 if mask_b1 else b, zero64 if mask_h1 else h, i, j].astype("float32")

    def key(S, MASK, deq, b, h, i, j):
        """Order-preserving int32 key: the score itself, or the float logit's bits with the
        magnitude bits of negative values flipped (so signed int order == float order)."""
        if not has_mask:
            return S[b, h, i, j]
        bits = tirx.reinterpret("int32", S[b, h, i, j].astype("float32") * deq + mval(MASK, b, h, i, j))
        return tirx.bitwise_xor(bits, tirx.bitwise_and(tirx.shift_right(bits, i32(31)), i32(0x7FFFFFFF)))

    def valid(MASK, b, h, i, j):
        """1 for a selectable key (int32), 0 for one the additive mask removes."""
        if not has_mask:
            return i32(1)
        return (mval(MASK, b, h, i, j) > tirx.const(masked_below, "float32")).astype("int32")

    @T.macro
    def select_rows(S, RATIO, QS, KS, MASK, IDX):
        B, H, SQ, SKV, KMAX = S.shape[0], S.shape[1], S.shape[2], S.shape[3], IDX.shape[3]
        for blk in T.parallel((B * H * SQ + _ROWS - 1) // _ROWS):
            # Scalars live in small "global"-scope buffers: TVM 0.27 lowers "local" allocations
            # on CPU to TVMBackendAllocWorkspace calls, which LLVM cannot keep in registers,
            # while small global-scope ones become (per-thread) stack slots.
            # st: 0 L, 1 lo, 2 hi, 3 count >= lo, 4 count > hi, 5 written, 6 j, 7 ties left
            st = T.alloc_buffer((8,), "int64", scope="global")
            cnt = T.alloc_buffer((1,), "int32", scope="global")
            mn = T.alloc_buffer((1,), "int32", scope="global")
            mx = T.alloc_buffer((1,), "int32", scope="global")
            sm = T.alloc_buffer((2,), "int64", scope="global")
            for r in range(T.min(T.int64(_ROWS), B * H * SQ - blk * _ROWS)):
                row = T.Bind(blk * _ROWS + r)
                b = T.Bind(row // (H * SQ))
                h = T.Bind(row // SQ % H)
                i = T.Bind(row % SQ)
                lim = T.Bind(T.max(T.min(SKV, i + 1 + bottom_right * (SKV - SQ) + no_causal * SKV), T.int64(0)))
                if has_mask:
                    deq = T.Bind(QS[h] * KS[(1 - tiled) * (h // group) + tiled * (h % kv_heads)] * T.float32(scale))
                else:
                    deq = T.Bind(T.float32(0))
                mn[0] = T.int32(2147483647)
                mx[0] = T.int32(-2147483648)
                if has_mask:
                    cnt[0] = 0
                    for j in range(lim):
                        ok = T.Bind(valid(MASK, b, h, i, j))
                        kj = T.Bind(key(S, MASK, deq, b, h, i, j))
                        cnt[0] = cnt[0] + ok
                        mn[0] = T.min(mn[0], T.Select(ok > 0, kj, T.int32(2147483647)))
                        mx[0] = T.max(mx[0], T.Select(ok > 0, kj, T.int32(-2147483648)))
                    st[0] = T.Cast("int64", cnt[0])
                else:
                    st[0] = lim
                kk = T.Bind(T.min(T.min(st[0], KMAX), T.max(T.int64(kmin), T.Cast("int64", T.ceil(RATIO[h] * T.Cast("float64", SKV) - eps)))))
                # threshold t = st[1]; keys > t all kept, st[7] keys == t taken in index order
                st[1] = T.int64(-2147483648)
                st[3] = st[0]
                st[4] = T.int64(0)
                if kk < st[0]:
                    if not has_mask:
                        # one vectorised pass: range, plus mean and variance for a first guess
                        sm[0] = T.int64(0)
                        sm[1] = T.int64(0)
                        for j in range(lim):
                            mn[0] = T.min(mn[0], S[b, h, i, j])
                            mx[0] = T.max(mx[0], S[b, h, i, j])
                            sm[0] = sm[0] + T.Cast("int64", S[b, h, i, j])
                            sm[1] = sm[1] + T.Cast("int64", S[b, h, i, j]) * T.Cast("int64", S[b, h, i, j])
                    # search on the threshold value: invariant count(key >= lo) >= k > count(key > hi);
                    # guesses interpolate the count linearly between the bounds, with bisection steps
                    # interleaved so the worst case stays logarithmic
                    st[1] = T.Cast("int64", mn[0])
                    st[2] = T.Cast("int64", mx[0])
                    for step in range(99):
                        if st[1] < st[2]:
                            span = T.Bind(st[2] - st[1] + T.int64(1))
                            guess = T.Bind(st[1] + T.Cast("int64", T.Cast("float64", span) * (T.Cast("float64", st[3] - kk) + T.float64(0.5)) / T.Cast("float64", st[3] - st[4])))
                            if has_mask:
                                mid = T.Bind(T.Select(step % 2 == 0, T.min(T.max(guess, st[1] + T.int64(1)), st[2]), st[1] + T.shift_right(span, T.int64(1))))
                            else:
                                # step 0: the normal quantile of the row's mean/std; then two
                                # interpolations per bisection
                                first = T.Bind(T.Cast("int64", T.round(_normal_guess(sm[0], sm[1], st[0], kk))))
                                mid = T.Bind(T.Select(step % 3 == 2, st[1] + T.shift_right(span, T.int64(1)), T.min(T.max(T.Select(step == 0, first, guess), st[1] + T.int64(1)), st[2])))
                            m32 = T.Bind(T.Cast("int32", mid))
                            cnt[0] = 0
                            for j in range(lim):
                                if has_mask:
                                    cnt[0] = cnt[0] + T.bitwise_and(valid(MASK, b, h, i, j), T.Cast("int32", key(S, MASK, deq, b, h, i, j) >= m32))
                                else:
                                    cnt[0] = cnt[0] + T.Cast("int32", S[b, h, i, j] >= m32)
                            if T.Cast("int64", cnt[0]) >= kk:
                                st[1] = mid
                                st[3] = T.Cast("int64", cnt[0])
                                if T.Cast("int64", cnt[0]) == kk:
                                    st[2] = mid  # exactly k keys >= mid: done, no ties to split
                            else:
                                st[2] = mid - T.int64(1)
                                st[4] = T.Cast("int64", cnt[0])
                st[5] = T.int64(0)
                st[6] = T.int64(0)
                t32 = T.Bind(T.Cast("int32", st[1]))
                if st[3] == kk:
                    # every key >= t is kept: find the last kept key (near the row's end), then a
                    # branch-free compaction up to it (the slot advances on a keep, never past k)
                    st[6] = lim - T.int64(1)
                    while st[6] > T.int64(0) and T.bitwise_and(valid(MASK, b, h, i, st[6]), T.Cast("int32", key(S, MASK, deq, b, h, i, st[6]) >= t32)) == 0:
                        st[6] = st[6] - T.int64(1)
                    for j in range(T.min(st[6] + T.int64(1), lim)):
                        IDX[b, h, i, st[5]] = T.Cast("int32", j)
                        st[5] = st[5] + T.Cast("int64", T.bitwise_and(valid(MASK, b, h, i, j), T.Cast("int32", key(S, MASK, deq, b, h, i, j) >= t32)))
                else:
                    st[7] = kk - st[4]
                    while st[6] < lim and st[5] < kk:
                        j = T.Bind(st[6])
                        kj = T.Bind(key(S, MASK, deq, b, h, i, j))
                        ok = T.Bind(T.Cast("int64", valid(MASK, b, h, i, j)))
                        tie = T.Bind(T.bitwise_and(ok, T.bitwise_and(T.Cast("int64", kj == t32), T.Cast("int64", st[7] > T.int64(0)))))
                        IDX[b, h, i, st[5]] = T.Cast("int32", j)
                        st[5] = st[5] + T.bitwise_or(T.bitwise_and(ok, T.Cast("int64", kj > t32)), tie)
                        st[7] = st[7] - tie
                        st[6] = j + T.int64(1)
                for t in range(KMAX - st[5]):
                    IDX[b, h, i, st[5] + t] = -1

    return topk_func(select_rows, block, has_mask)


def topk_func(select_rows, block, has_mask: bool):
    """The top-k PrimFunc (scores, ratio[H] f64[, q_scale[H], k_scale[Hkv], mask], idx) around a
    row-selection macro `select_rows(S, RATIO, QS, KS, MASK, IDX)`; the CPU and Adreno kernels share it."""
    group = block.group
    if has_mask:

        @T.prim_func
        def topk(s_h: T.handle, r_h: T.handle, qs_h: T.handle, ks_h: T.handle, m_h: T.handle, o_h: T.handle):
            T.func_attr({"global_symbol": "sat_topk_masked", "tirx.noalias": True, "tirx.is_scheduled": True})
            B, H, SQ, SKV, KMAX, MB, MH = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
            S = T.match_buffer(s_h, (B, H, SQ, SKV), "int32")
            RATIO = T.match_buffer(r_h, (H,), "float64")
            QS = T.match_buffer(qs_h, (H,), "float32")
            KS = T.match_buffer(ks_h, (H // group,), "float32")
            MASK = T.match_buffer(m_h, (MB, MH, SQ, SKV), block.dtype)
            IDX = T.match_buffer(o_h, (B, H, SQ, KMAX), "int32")
            select_rows(S, RATIO, QS, KS, MASK, IDX)

    else:

        @T.prim_func
        def topk(s_h: T.handle, r_h: T.handle, o_h: T.handle):
            T.func_attr({"global_symbol": "sat_topk", "tirx.noalias": True, "tirx.is_scheduled": True})
            B, H, SQ, SKV, KMAX = T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
            S = T.match_buffer(s_h, (B, H, SQ, SKV), "int32")
            RATIO = T.match_buffer(r_h, (H,), "float64")
            IDX = T.match_buffer(o_h, (B, H, SQ, KMAX), "int32")
            select_rows(S, RATIO, None, None, None, IDX)

    return topk
