"""Top-k for Adreno: one work-group of `THREADS` work-items per (batch, head, query row).

Same inputs, outputs and rule as `ops.topk.topk_indices` (and `ops.reference.topk_indices`): a
row keeps k = min(V, max(k_min, ceil(ratio[h] * Skv))) of its V visible keys (causal prefix, mask
> MASKED_BELOW; `block.keep_count`), ranked by the int32 score or, with a mask, by the float logit through the same
order-preserving int32 key; ties go to the lower key index, indices come out ascending, unused
slots hold -1.

Per row, every pass walks the row in rounds of `THREADS` consecutive keys (coalesced loads):

1. count valid keys and the key range [min, max] (work-group reductions in local memory);
2. bisect on the threshold value t (<= 32 steps of "count keys >= mid"): t = the k-th largest key;
3. compact: per round, an inclusive scan of (key > t) + (key == t) << 32 gives each key its
   output slot, so keys > t and the first k - count(> t) keys == t land in index order;
4. fill the slots from k on with -1.

Adreno GPUs have no fp64, so the float64 ratio is read as its IEEE bits and ceil(r*L - 1e-9) is
evaluated exactly with 64-bit integers (r*L = M*L / 2^s, M the 53-bit significand, L = Skv);
only the fractional-part test "> 1e-9" runs in float32, which can differ from the CPU kernel's
float64 only if r*L lies within ~1e-16 (relative) of an integer + 1e-9.
"""
from __future__ import annotations

from ..._compat import T, tirx
from ...block import MASKED_BELOW, CausalMode, KVMap
from ...ops.topk import topk_func

THREADS = 64  # work-items per row: one Adreno wave or less
_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def _pow2_neg(n):
    """float32 2^-n for int64 n >= 0 (0 for n > 126: the term it scales is then < 1e-20)."""
    i32 = lambda v: tirx.const(v, "int32")  # noqa: E731
    bits = tirx.shift_left(i32(127) - tirx.min(n, tirx.const(126, "int64")).astype("int32"), i32(23))
    return tirx.Select(n > 126, tirx.const(0.0, "float32"), tirx.reinterpret("float32", bits))


def _ceil_ratio(bits, length):
    """ceil(r * length - 1e-9) for the float64 r in [0, 1] with IEEE bits `bits` (int64 exprs)."""
    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731
    exponent = tirx.bitwise_and(tirx.shift_right(bits, i64(52)), i64(0x7FF))
    mant = tirx.bitwise_or(tirx.bitwise_and(bits, i64((1 << 52) - 1)), i64(1 << 52))
    shift = i64(1075) - exponent  # r = mant / 2^shift; shift >= 52 for r <= 1
    # mant * length = hi * 2^32 + lo, hi < 2^53 (mant < 2^53, length < 2^31)
    low = tirx.bitwise_and(mant, i64(0xFFFFFFFF)) * length
    hi = tirx.shift_right(mant, i64(32)) * length + tirx.shift_right(low, i64(32))
    lo = tirx.bitwise_and(low, i64(0xFFFFFFFF))
    sh = shift - i64(32)
    whole = tirx.Select(sh >= 63, i64(0), tirx.shift_right(hi, tirx.min(sh, i64(62))))
    rem = tirx.Select(sh >= 63, hi, tirx.bitwise_and(hi, tirx.shift_left(i64(1), tirx.min(sh, i64(62))) - i64(1)))
    frac = rem.astype("float32") * _pow2_neg(sh) + lo.astype("float32") * _pow2_neg(shift)
    up = (frac > tirx.const(1e-9, "float32")).astype("int64")
    return tirx.Select(exponent == 0, i64(0), whole + up)


def topk_indices(block, k_min: int, mask_shape=None, threads: int = THREADS):
    """PrimFunc (S, RATIO[H] f64[, QS[H], KS[Hkv], MASK], IDX) -> None, scheduled for a GPU."""
    if threads < 2:
        raise ValueError(f"threads must be >= 2, got {threads}")
    has_mask = mask_shape is not None
    mask_b1 = has_mask and int(mask_shape[0]) == 1
    mask_h1 = has_mask and int(mask_shape[1]) == 1
    bottom_right = int(block.causal == CausalMode.BOTTOM_RIGHT)
    no_causal = int(block.causal == CausalMode.NONE)
    group, kv_heads = block.group, block.num_kv_heads
    tiled = int(block.kv_map == KVMap.TILE)
    scale, kmin = float(block.scale), int(k_min)
    i32 = lambda x: tirx.const(x, "int32")  # noqa: E731
    zero64 = tirx.const(0, "int64")

    def mval(MASK, b, h, i, j):
        return MASK[zero64 if mask_b1 else b, zero64 if mask_h1 else h, i, j].astype("float32")

    def key(S, MASK, deq, b, h, i, j):
        """The ranking as an order-preserving int32 key (as ops.topk)."""
        if not has_mask:
            return S[b, h, i, j]
        bits = tirx.reinterpret("int32", S[b, h, i, j].astype("float32") * deq + mval(MASK, b, h, i, j))
        return tirx.bitwise_xor(bits, tirx.bitwise_and(tirx.shift_right(bits, i32(31)), i32(0x7FFFFFFF)))

    def valid(MASK, b, h, i, j):
        if not has_mask:
            return tirx.const(True, "bool")
        return mval(MASK, b, h, i, j) > tirx.const(MASKED_BELOW, "float32")

    @T.macro
    def reduce(red, acc, st, tx, slot, value, op):
        """st[slot] = op over the work-group of `value` (op 0 sum, 1 min, 2 max).

        One work-item folds the `threads` partials into a register: a tree, or a fold in place,
        needs barriers inside branches, which TVM's sync planner refuses.
        """
        red[tx] = value
        T.tvm_storage_sync("shared")
        if tx == 0:
            acc[0] = red[0]
            for q in range(1, threads):
                if op == 0:
                    acc[0] = acc[0] + red[q]
                elif op == 1:
                    acc[0] = T.min(acc[0], red[q])
                else:
                    acc[0] = T.max(acc[0], red[q])
            st[slot] = acc[0]
        T.tvm_storage_sync("shared")

    @T.macro
    def count(S, MASK, deq, b, h, i, tx, lim, rounds, loc, above, strict):
        """loc[0] = this work-item's count of valid keys >= `above` (> `above` if strict)."""
        loc[0] = T.int64(0)
        for r in range(rounds):
            j = T.Bind(r * threads + tx)
            if j < lim:
                if valid(MASK, b, h, i, j):
                    if strict:
                        loc[0] = loc[0] + T.Cast("int64", T.Cast("int64", key(S, MASK, deq, b, h, i, j)) > above)
                    else:
                        loc[0] = loc[0] + T.Cast("int64", T.Cast("int64", key(S, MASK, deq, b, h, i, j)) >= above)

    @T.macro
    def select_rows(S, RATIO, QS, KS, MASK, IDX):
        B, H, SQ, SKV, KMAX = S.shape[0], S.shape[1], S.shape[2], S.shape[3], IDX.shape[3]
        RBITS = T.decl_buffer((H,), "int64", data=RATIO.data)  # no fp64 on Adreno: read the bits
        for row in T.thread_binding(B * H * SQ, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                # TVM's sync planner rejects shared loads in branch conditions, selects and loop
                # bounds, and a branch that reads and writes one shared buffer: shared values are
                # copied to registers (sv) after barriers, and the bisection bounds live apart
                red = T.alloc_buffer((threads,), "int64", scope="shared")
                scan = T.alloc_buffer((threads,), "int64", scope="shared")
                st = T.alloc_buffer((5,), "int64", scope="shared")  # 0 L, 1 min, 2 max, 3 k, 4 count
                bnd = T.alloc_buffer((2,), "int64", scope="shared")  # bisection bounds lo, hi
                sv = T.alloc_buffer((5,), "int64", scope="local")
                loc = T.alloc_buffer((4,), "int64", scope="local")
                acc = T.alloc_buffer((1,), "int64", scope="local")
                b = T.Bind(row // (H * SQ))
                h = T.Bind(row // SQ % H)
                i = T.Bind(row % SQ)
                lim = T.Bind(T.max(T.min(SKV, i + 1 + bottom_right * (SKV - SQ) + no_causal * SKV), T.int64(0)))
                rounds = T.Bind((lim + threads - 1) // threads)
                if has_mask:
                    deq = T.Bind(QS[h] * KS[(1 - tiled) * (h // group) + tiled * (h % kv_heads)] * T.float32(scale))
                else:
                    deq = T.Bind(T.float32(0))
                # 1. valid count and key range
                loc[0] = T.int64(0)
                loc[1] = T.int64(_INT32_MAX)
                loc[2] = T.int64(_INT32_MIN)
                for r in range(rounds):
                    j = T.Bind(r * threads + tx)
                    if j < lim:
                        if valid(MASK, b, h, i, j):
                            kj = T.Bind(T.Cast("int64", key(S, MASK, deq, b, h, i, j)))
                            loc[0] = loc[0] + T.int64(1)
                            loc[1] = T.min(loc[1], kj)
                            loc[2] = T.max(loc[2], kj)
                reduce(red, acc, st, tx, 0, loc[0], 0)
                reduce(red, acc, st, tx, 1, loc[1], 1)
                reduce(red, acc, st, tx, 2, loc[2], 2)
                for q in range(3):
                    sv[q] = st[q]
                if tx == 0:
                    sv[3] = T.min(T.min(sv[0], KMAX), T.max(T.int64(kmin), _ceil_ratio(RBITS[h], SKV)))
                    st[3] = sv[3]
                    bnd[0] = sv[1]
                    bnd[1] = T.Select(sv[3] >= sv[0], sv[1], sv[2])  # all kept: t = the smallest key
                T.tvm_storage_sync("shared")
                # 2. bisection, invariant count(key >= lo) >= k > count(key > hi); a no-op once
                # lo == hi, but always 32 rounds (barriers may not sit in branches)
                for _step in range(32):
                    sv[1] = bnd[0]
                    sv[2] = bnd[1]
                    mid = T.Bind(sv[1] + (sv[2] - sv[1] + T.int64(1)) // T.int64(2))
                    loc[0] = T.int64(0)
                    if sv[1] < sv[2]:
                        count(S, MASK, deq, b, h, i, tx, lim, rounds, loc, mid, False)
                    reduce(red, acc, st, tx, 4, loc[0], 0)
                    if tx == 0:
                        sv[3] = st[3]
                        sv[4] = st[4]
                        bnd[0] = T.Select(sv[4] >= sv[3], mid, sv[1])
                        bnd[1] = T.Select(sv[4] >= sv[3], sv[2], mid - T.int64(1))
                    T.tvm_storage_sync("shared")
                sv[1] = bnd[0]
                t = T.Bind(sv[1])
                count(S, MASK, deq, b, h, i, tx, lim, rounds, loc, t, True)
                reduce(red, acc, st, tx, 4, loc[0], 0)
                sv[3] = st[3]
                sv[4] = st[3] - st[4]  # keys == t to take
                # 3. compaction in index order; loc[2]/loc[3]: keys > t / == t in earlier rounds
                loc[2] = T.int64(0)
                loc[3] = T.int64(0)
                for r in range(rounds):
                    j = T.Bind(r * threads + tx)
                    loc[1] = T.int64(0)  # this key's flag: 1 if > t, 2^32 if == t
                    if j < lim:
                        if valid(MASK, b, h, i, j):
                            kj = T.Bind(T.Cast("int64", key(S, MASK, deq, b, h, i, j)))
                            loc[1] = T.Cast("int64", kj > t) + T.shift_left(T.Cast("int64", kj == t), T.int64(32))
                    red[tx] = loc[1]
                    T.tvm_storage_sync("shared")
                    if tx == 0:  # exclusive scan of the round's flags
                        acc[0] = T.int64(0)
                        for q in range(threads):
                            scan[q] = acc[0]
                            acc[0] = acc[0] + red[q]
                    T.tvm_storage_sync("shared")
                    above = T.Bind(loc[2] + T.bitwise_and(scan[tx], T.int64(0xFFFFFFFF)))
                    ties = T.Bind(loc[3] + T.shift_right(scan[tx], T.int64(32)))
                    if T.bitwise_and(loc[1], T.int64(1)) == T.int64(1) or (loc[1] > T.int64(1) and ties < sv[4]):
                        IDX[b, h, i, above + T.min(ties, sv[4])] = T.Cast("int32", j)
                    total = T.Bind(scan[threads - 1] + red[threads - 1])
                    loc[2] = loc[2] + T.bitwise_and(total, T.int64(0xFFFFFFFF))
                    loc[3] = loc[3] + T.shift_right(total, T.int64(32))
                    T.tvm_storage_sync("shared")
                # 4. -1 from slot k on
                for r in range((KMAX - sv[3] + threads - 1) // threads):
                    if sv[3] + r * threads + tx < KMAX:
                        IDX[b, h, i, sv[3] + r * threads + tx] = -1

    return topk_func(select_rows, block, has_mask)


__all__ = ["THREADS", "topk_indices"]
