"""The hand-written CPU sparse-attention kernel (static D and Dv), per head or per KV group.

One parallel task owns a tile: R query rows of one KV head and all the query heads that read it
("pairs", R x group of them). Setup turns each pair's index row into flat K/V row numbers
(padded, so groups of slots never need a bound check; in group mode once per query row, whose
heads share it) and prefetches the next tile's index rows. Then three phases:

A. logits: key blocks of `_KEY_BLOCK` keys in order; in each block every pair takes its selected
   keys there, `_DOT_KEYS` at a time: one accumulator per key, the loop over q's vectors outside
   the keys (each q vector loaded once, the keys' K rows read side by side: their cache misses
   overlap), then a transposed reduction (shuffle-adds) to one vector of dots. Rows of a tile share
   keys, so a block's K rows are read from memory once and then from L1 by the other pairs.
B. per pair, vectorised: row max, exp (polynomial), sum: an exact softmax, no rescaling.
C. p·V in the same block order, per unit of pairs sharing their slots (a pair; a query row's
   heads in group mode): HB heads x VC vectors of Dv accumulators per pass over the slots
   (`_pv_tile`), each V vector loaded once for HB heads. Per head that is one pair with all its
   Dv accumulators in registers; in group mode 3 heads x 4 vectors on AVX2 (2026-12-07, Qwen2
   block at 2048-4096 tokens on the Zen 3 host: the group kernel 10-14 % faster than per pair).
   The same sharing in phase A (heads x keys of dot accumulators) measured no faster.

Index slots are visited in order, so any order is correct; ascending (as top-k writes them)
keeps the key blocks hot. Trailing -1 slots are skipped, other -1 slots get logit -inf. A pair
with no used slot (top-k found no visible key) gets the dense block's value: the softmax over all
its causally allowed keys (NaN if every logit is -inf), computed by a slow scalar path.

Per-head mode reads idx [B,H,Sq,K]; group mode reads idx [B,Hkv,Sq,K], one selection per KV
head and query row shared by the group's query heads. Workers claim tiles one at a time
(`_tasks`), the last (longest) rows first, and claim the next tile on starting one, so its index
rows can be prefetched. Against TVM's static split of the tiles (2026-12-08, Zen 3 VM, Qwen2 block,
group top-k + group sparse, 30 paired calls): median -3..10 % at 1k-4k tokens, the slowest calls
-2..30 %; the fastest call the same.
"""
from __future__ import annotations

from .._compat import EXACT_BUFFERS, T, tirx
from ..block import CausalMode, KVMap
from ._isa import bcast, exp_neg, pack, prefetch, row_sums, vec, vmax_all, vmin_all, vsum_all
from ._tasks import FETCH_ADD_IR, WORKERS, claim

# Measured on the 2-core Zen 3 host (Qwen2 block, 1k-4k tokens): 128-key blocks (32 KB of K at d 64,
# L1 + L2) and 56 pairs per tile (7 heads x 8 rows) beat 64/28 by 3-6 %; 32-key blocks lose 10-30 %.
_KEY_BLOCK = 128
_PAIRS = 56
_NO_END = 1 << 62  # key bound of the last visit: every remaining slot


# Keys per dot step in phase A: 8 accumulators, a q vector and a spare fit every ISA's 16+ vector
# registers. Measured on the Zen 3 host (Qwen2 block, paired rounds): 2-6 % faster at 2048-4096 tokens
# than q held in registers with 4 keys x 2 chains walked key by key; 12 keys slower than 8.
_DOT_KEYS = 8


def _pv_tile(isa, group: int, dv_vectors: int):
    """p·V tile of `group` pairs sharing slots (heads HB, V vectors VC): HB x VC accumulators, HB
    broadcast weights and a V vector in registers; of the tiles that fit, the one with the fewest loads per key (each head
    chunk reloads the row's V vectors, each V chunk reloads the heads' weights)."""
    tiles = [(hb, vc) for hb in range(1, group + 1) for vc in range(1, dv_vectors + 1)
             if dv_vectors % vc == 0 and hb * vc + hb + 1 <= isa.registers]
    return min(tiles, key=lambda t: (-(-group // t[0]) * dv_vectors + group * dv_vectors // t[1], t[0] * t[1]))


def sparse_kernel(block, D: int, DV: int, mask_shape, isa, group_mode: bool = False, key_block: int = _KEY_BLOCK,
                  pairs: int = _PAIRS, pv_tile=None):
    has_mask = mask_shape is not None
    mask_b1 = has_mask and int(mask_shape[0]) == 1
    mask_h1 = has_mask and int(mask_shape[1]) == 1
    dtype = block.dtype
    group, kv_heads = block.group, block.num_kv_heads
    tiled = int(block.kv_map == KVMap.TILE)
    bottom_right = int(block.causal == CausalMode.BOTTOM_RIGHT)
    no_causal = int(block.causal == CausalMode.NONE)
    scale = float(block.scale)
    W = isa.lanes()
    WV = W if DV % W == 0 else 8  # DV is a multiple of 8
    G = _DOT_KEYS
    R = max(1, pairs // group)  # rows per tile
    P = R * group
    KB = key_block
    PAD = max(G, W)
    NPF = 1 if group_mode else group  # index rows per query row
    CU = group if group_mode else 1  # pairs that share their slots: a row's heads in group mode
    HB, VC = pv_tile or _pv_tile(isa, CU, DV // WV)
    if HB < 1 or VC < 1 or (DV // WV) % VC:
        raise ValueError(f"pv_tile {(HB, VC)}: need >= 1 heads and a number of vectors dividing Dv's {DV // WV}")
    f32 = "float32"
    neg_inf = tirx.const(float("-inf"), f32)
    zero64 = tirx.const(0, "int64")

    def head(hk, j):
        return hk * group + j if not tiled else j * kv_heads + hk

    def ih(hk, h):
        """The idx head of a pair: its own head, or its KV head in group mode."""
        return hk if group_mode else h

    def ri(p):
        """The pair's row of `rw`: one per pair, or one per query row in group mode (its heads share it)."""
        return p // group if group_mode else p

    def shares_row(p):
        """Group mode: the pair's slots are its row's first pair's (set up once per row)."""
        return p % group != 0 if group_mode else tirx.const(False)

    def mval(MASK, b, h, i, key):
        return MASK[zero64 if mask_b1 else b, zero64 if mask_h1 else h, i, key].astype(f32)

    def dots_vector(A, MASK, IDX, b, h, ihd, i, t0, n):
        """Logits of slots t0..t0+G-1 (slots >= n repeat slot n-1) from the G accumulators."""
        dots = row_sums([vec(A, [g, 0], W) for g in range(G)], W) * bcast(tirx.const(scale, f32), G)
        if has_mask:
            keys = [tirx.max(IDX[b, ihd, i, tirx.min(t0 + g, n - 1)], 0) for g in range(G)]
            dots = dots + pack([mval(MASK, b, h, i, key) for key in keys])
        return dots

    def krow(rw, p, t):
        """Offset of slot t's K row in the flat K."""
        return tirx.Cast("int64", rw[ri(p), t]) * D

    def fallback_logit(dot, MASK, b, h, i, key):
        """A row without a visible key: dense logits (an fp16 block adds its mask in fp16)."""
        value = dot * T.float32(scale)
        if not has_mask:
            return value
        if dtype == "float16":
            return (T.Cast(dtype, value) + MASK[zero64 if mask_b1 else b, zero64 if mask_h1 else h, i, key]).astype(f32)
        return value + mval(MASK, b, h, i, key)

    @T.macro
    def dense_row(Q, K, V, MASK, OUT, b, h, hk, i, SQ, SKV, ds, ar):
        """Top-k found no visible key: the dense block's softmax over every causally allowed key.
        ds: 0 running max, 1 running sum, 2 dot."""
        lim = T.Bind(T.max(T.min(SKV, i + 1 + bottom_right * (SKV - SQ) + no_causal * SKV), zero64))
        ds[0] = neg_inf
        ds[1] = T.float32(0)
        for c in T.unroll(DV // WV):
            ar[T.Ramp(c * WV, 1, WV)] = bcast(T.float32(0), WV)
        for j in range(lim):
            ds[2] = T.float32(0)
            for d in range(D):
                ds[2] = ds[2] + T.Cast(f32, Q[b, h, i, d]) * T.Cast(f32, K[b, hk, j, d])
            lgt = T.Bind(fallback_logit(ds[2], MASK, b, h, i, j))
            if lgt > neg_inf:
                mnew = T.Bind(T.max(ds[0], lgt))
                corr = T.Bind(exp_neg(ds[0] - mnew))
                pj = T.Bind(exp_neg(lgt - mnew))
                ds[1] = ds[1] * corr + pj
                ds[0] = mnew
                for c in T.unroll(DV // WV):
                    ar[T.Ramp(c * WV, 1, WV)] = ar[T.Ramp(c * WV, 1, WV)] * bcast(corr, WV) + bcast(pj, WV) * vec(V, [b, hk, j, c * WV], WV, f32)
        if ds[1] > T.float32(0):
            for c in T.unroll(DV // WV):
                OUT[b, h, i, T.Ramp(c * WV, 1, WV)] = T.Cast(f"{dtype}x{WV}", ar[T.Ramp(c * WV, 1, WV)] * bcast(T.float32(1) / ds[1], WV))
        else:
            for c in T.unroll(DV // WV):
                OUT[b, h, i, T.Ramp(c * WV, 1, WV)] = T.Cast(f"{dtype}x{WV}", bcast(T.float32("nan"), WV))

    def pv_chunk(hb):
        """acc += p * V over slots lo..hi for pairs p0+j0..p0+j0+hb-1 and V vectors c0..c0+VC-1."""

        @T.macro
        def chunk(VF, rw, lg, acc, ag, p0, j0, c0, lo, hi):
            for jj in T.unroll(hb):
                for c in T.unroll(VC):
                    ag[jj * VC + c, T.Ramp(0, 1, WV)] = acc[p0 + j0 + jj, T.Ramp((c0 + c) * WV, 1, WV)]
            for t in range(lo, hi):
                base = T.Bind(T.Cast("int64", rw[ri(p0), t]) * DV)
                for c in T.unroll(VC):
                    vv = T.Bind(vec(VF, [base + (c0 + c) * WV], WV, f32))
                    for jj in T.unroll(hb):
                        ag[jj * VC + c, T.Ramp(0, 1, WV)] = ag[jj * VC + c, T.Ramp(0, 1, WV)] + bcast(lg[p0 + j0 + jj, t], WV) * vv
            for jj in T.unroll(hb):
                for c in T.unroll(VC):
                    acc[p0 + j0 + jj, T.Ramp((c0 + c) * WV, 1, WV)] = ag[jj * VC + c, T.Ramp(0, 1, WV)]

        return chunk

    full_chunk, rest_chunk = pv_chunk(HB), pv_chunk(CU % HB or HB)

    @T.macro
    def pv_unit(VF, rw, lg, acc, ag, p0, lo, hi):
        """p·V of the CU pairs from p0 over their shared slots lo..hi."""
        for cj in T.unroll(CU // HB):
            for cc in T.unroll(DV // WV // VC):
                full_chunk(VF, rw, lg, acc, ag, p0, cj * HB, cc * VC, lo, hi)
        if CU % HB != 0:
            for cc in T.unroll(DV // WV // VC):
                rest_chunk(VF, rw, lg, acc, ag, p0, CU // HB * HB, cc * VC, lo, hi)

    @T.macro
    def body(Q, K, V, IDX, MASK, OUT):
        B, SQ, SKV, KK = Q.shape[0], Q.shape[2], K.shape[2], IDX.shape[3]
        NT = T.Bind((SQ + R - 1) // R)
        NBMAX = T.Bind(SKV // KB + 2)
        KF = T.decl_buffer((B * kv_heads * SKV * D,), dtype, data=K.data)
        VF = T.decl_buffer((B * kv_heads * SKV * DV,), dtype, data=V.data)
        NTASK = T.Bind(B * kv_heads * NT)
        CNT = T.alloc_buffer((1,), "int64", scope="global")
        CNT[0] = zero64
        with T.attr(0, "pragma_import_llvm", FETCH_ADD_IR):
            for worker in T.parallel(WORKERS):
                tk = T.alloc_buffer((2,), "int64", scope="global")  # this task, the next
                # "global" scope: per-worker stack or workspace buffers (TVM 0.27 turns "local" ones
                # into workspace calls that LLVM cannot keep in registers)
                qt = T.alloc_buffer((P, D), f32, scope="global")
                acc = T.alloc_buffer((P, DV), f32, scope="global")
                lg = T.alloc_buffer((P, KK + PAD), f32, scope="global")
                rw = T.alloc_buffer((R if group_mode else P, KK + PAD), "int32", scope="global")  # flat K/V row of each slot
                bnd = T.alloc_buffer((P, NBMAX), "int64", scope="global")  # slots done after each key block
                st = T.alloc_buffer((P, 3), "int64", scope="global")  # used slots, next slot in A, has holes
                ssum = T.alloc_buffer((P,), f32, scope="global")
                ar = T.alloc_buffer((DV,), f32, scope="global")
                ag = T.alloc_buffer((HB * VC, WV), f32, scope="global")
                av = T.alloc_buffer((G, W), f32, scope="global")
                mv = T.alloc_buffer((W,), f32, scope="global")
                sv = T.alloc_buffer((W,), f32, scope="global")
                ds = T.alloc_buffer((3,), f32, scope="global")
                pt = T.alloc_buffer((2,), "int64", scope="global")
                iv = T.alloc_buffer((W,), "int32", scope="global")
                ik = T.alloc_buffer((1,), "int32", scope="global")
                tk[0] = claim(CNT)
                while tk[0] < NTASK:
                    tk[1] = claim(CNT)
                    task = T.Bind(tk[0])
                    b = T.Bind(task // (kv_heads * NT))
                    hk = T.Bind(task // NT % kv_heads)
                    i0 = T.Bind((NT - 1 - task % NT) * R)  # the last (largest) tiles first
                    npairs = T.Bind(T.min(T.int64(R), SQ - i0) * group)
                    rbase = T.Bind(T.Cast("int32", (b * kv_heads + hk) * SKV))
                    # -------------------------------------------------------- setup
                    pt[1] = zero64  # 1 + the largest key of the tile
                    for p in range(npairs):
                        h = T.Bind(head(hk, p % group))
                        i = T.Bind(i0 + p // group)
                        ihd = T.Bind(ih(hk, h))
                        for c in T.unroll(D // W):
                            qt[p, T.Ramp(c * W, 1, W)] = vec(Q, [b, h, i, c * W], W, f32)
                        for c in T.unroll(DV // WV):
                            acc[p, T.Ramp(c * WV, 1, WV)] = bcast(T.float32(0), WV)
                        if shares_row(p):
                            st[p, 0] = st[p - p % group, 0]
                            st[p, 1] = zero64
                            st[p, 2] = st[p - p % group, 2]
                        else:
                            # drop trailing -1 slots (top-k pads a row's tail): W at a time, then one by one
                            pt[0] = KK
                            ik[0] = -1
                            while pt[0] >= W and ik[0] < 0:
                                ik[0] = vmax_all(vec(IDX, [b, ihd, i, pt[0] - W], W), W)
                                if ik[0] < 0:
                                    pt[0] = pt[0] - W
                            while pt[0] > zero64 and IDX[b, ihd, i, pt[0] - 1] < 0:
                                pt[0] = pt[0] - 1
                            st[p, 0] = pt[0]
                            st[p, 1] = zero64
                            # K/V rows of the used slots (-1 -> key 0, masked in phase B), padded with the last
                            # one so that whole groups of G slots read valid rows; and whether -1 slots occur
                            # inside the used part (never from top-k)
                            iv[T.Ramp(0, 1, W)] = bcast(T.int32(0), W)
                            for c in range(pt[0] // W):
                                x = T.Bind(vec(IDX, [b, ihd, i, c * W], W))
                                iv[T.Ramp(0, 1, W)] = T.min(iv[T.Ramp(0, 1, W)], x)
                                rw[ri(p), T.Ramp(c * W, 1, W)] = T.max(x, bcast(T.int32(0), W)) + bcast(rbase, W)
                            ik[0] = vmin_all(iv[T.Ramp(0, 1, W)], W)
                            for t in range(pt[0] // W * W, pt[0]):
                                ik[0] = T.min(ik[0], IDX[b, ihd, i, t])
                                rw[ri(p), t] = T.max(IDX[b, ihd, i, t], 0) + rbase
                            for t in range(PAD):
                                rw[ri(p), pt[0] + t] = T.Select(pt[0] > zero64, rw[ri(p), T.max(pt[0] - 1, zero64)], rbase)
                            st[p, 2] = T.Cast("int64", ik[0] < 0)
                            if pt[0] > zero64:
                                pt[1] = T.max(pt[1], T.Cast("int64", IDX[b, ihd, i, pt[0] - 1]) + 1)
                    nblk = T.Bind((pt[1] + KB - 1) // KB)
                    # the next task's index rows stream into L2 while this tile computes (the first touch
                    # of idx, which top-k wrote, is a DRAM read)
                    if tk[1] < NTASK:
                        i0n = T.Bind((NT - 1 - tk[1] % NT) * R)
                        bn = T.Bind(tk[1] // (kv_heads * NT))
                        hkn = T.Bind(tk[1] // NT % kv_heads)
                        for pn in range(T.min(T.int64(R), SQ - i0n) * NPF):
                            for c in range((KK + 15) // 16):
                                T.evaluate(prefetch(T.address_of(IDX[bn, ih(hkn, head(hkn, pn % NPF)), i0n + pn // NPF, c * 16])))
                    # -------------------------------------------------------- A: logits
                    for kb in range(nblk + 1):
                        end = T.Bind(T.Select(kb < nblk, (kb + 1) * KB, T.int64(_NO_END)))
                        for p in range(npairs):
                            h = T.Bind(head(hk, p % group))
                            i = T.Bind(i0 + p // group)
                            ihd = T.Bind(ih(hk, h))
                            n = T.Bind(st[p, 0])
                            if st[p, 1] < n:
                                if T.Cast("int64", rw[ri(p), st[p, 1]] - rbase) < end:
                                    pt[0] = st[p, 1]
                                    while pt[0] < n and T.Cast("int64", rw[ri(p), pt[0]] - rbase) < end:
                                        for g in T.unroll(G):
                                            av[g, T.Ramp(0, 1, W)] = qt[p, T.Ramp(0, 1, W)] * vec(KF, [krow(rw, p, pt[0] + g)], W, f32)
                                        for c in T.unroll(1, D // W):
                                            for g in T.unroll(G):
                                                av[g, T.Ramp(0, 1, W)] = av[g, T.Ramp(0, 1, W)] + qt[p, T.Ramp(c * W, 1, W)] * vec(KF, [krow(rw, p, pt[0] + g) + c * W], W, f32)
                                        lg[p, T.Ramp(pt[0], 1, G)] = dots_vector(av, MASK, IDX, b, h, ihd, i, pt[0], n)
                                        pt[0] = pt[0] + G
                                    st[p, 1] = pt[0]
                            bnd[p, kb] = T.min(st[p, 1], n)
                    # -------------------------------------------------------- B: softmax
                    for p in range(npairs):
                        h = T.Bind(head(hk, p % group))
                        i = T.Bind(i0 + p // group)
                        ihd = T.Bind(ih(hk, h))
                        n = T.Bind(st[p, 0])
                        nv = T.Bind((n + W - 1) // W)
                        ssum[p] = T.float32(0)
                        if n > zero64:
                            for t in range(n, nv * W):
                                lg[p, t] = neg_inf
                            if st[p, 2] > zero64:
                                for t in range(n):
                                    if IDX[b, ihd, i, t] < 0:
                                        lg[p, t] = neg_inf
                            mv[T.Ramp(0, 1, W)] = bcast(neg_inf, W)
                            for c in range(nv):
                                mv[T.Ramp(0, 1, W)] = T.max(mv[T.Ramp(0, 1, W)], lg[p, T.Ramp(c * W, 1, W)])
                            mx = T.Bind(vmax_all(mv[T.Ramp(0, 1, W)], W))
                            if mx > neg_inf:
                                sv[T.Ramp(0, 1, W)] = bcast(T.float32(0), W)
                                for c in range(nv):
                                    x = T.Bind(lg[p, T.Ramp(c * W, 1, W)])
                                    e = T.Bind(T.Select(x > bcast(neg_inf, W), exp_neg(x - bcast(mx, W)), bcast(T.float32(0), W)))
                                    lg[p, T.Ramp(c * W, 1, W)] = e
                                    sv[T.Ramp(0, 1, W)] = sv[T.Ramp(0, 1, W)] + e
                                ssum[p] = vsum_all(sv[T.Ramp(0, 1, W)], W)
                            else:
                                st[p, 0] = zero64  # every logit -inf: output 0 (not the dense fallback)
                                st[p, 2] = T.int64(-1)
                    # -------------------------------------------------------- C: p·V
                    # a pair whose logits were all -inf (st[p, 0] = 0 after B) accumulates garbage here,
                    # which the output never reads
                    for kb in range(nblk + 1):
                        for u in range(npairs // CU):
                            lo = T.Bind(T.Select(kb > 0, bnd[u * CU, T.max(kb - 1, 0)], zero64))
                            hi = T.Bind(bnd[u * CU, kb])
                            if lo < hi:
                                pv_unit(VF, rw, lg, acc, ag, u * CU, lo, hi)
                    # -------------------------------------------------------- output
                    for p in range(npairs):
                        h = T.Bind(head(hk, p % group))
                        i = T.Bind(i0 + p // group)
                        if st[p, 0] > zero64:
                            inv = T.Bind(bcast(T.float32(1) / ssum[p], WV))
                            for c in T.unroll(DV // WV):
                                OUT[b, h, i, T.Ramp(c * WV, 1, WV)] = T.Cast(f"{dtype}x{WV}", acc[p, T.Ramp(c * WV, 1, WV)] * inv)
                        elif st[p, 2] < zero64:
                            for c in T.unroll(DV // WV):
                                OUT[b, h, i, T.Ramp(c * WV, 1, WV)] = T.Cast(f"{dtype}x{WV}", bcast(T.float32(0), WV))
                        else:
                            dense_row(Q, K, V, MASK, OUT, b, h, hk, i, SQ, SKV, ds, ar)
                    tk[0] = tk[1]

    idx_heads = kv_heads if group_mode else block.num_heads
    name = "sat_sparse_attention_group" if group_mode else "sat_sparse_attention"
    if has_mask:

        @T.prim_func
        def sparse(q_h: T.handle, k_h: T.handle, v_h: T.handle, i_h: T.handle, m_h: T.handle, o_h: T.handle):
            T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True, EXACT_BUFFERS: True})
            B, H, SQ, SKV, KK, MB, MH = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
            Q = T.match_buffer(q_h, (B, H, SQ, D), dtype)
            K = T.match_buffer(k_h, (B, kv_heads, SKV, D), dtype)
            V = T.match_buffer(v_h, (B, kv_heads, SKV, DV), dtype)
            IDX = T.match_buffer(i_h, (B, idx_heads, SQ, KK), "int32")
            MASK = T.match_buffer(m_h, (MB, MH, SQ, SKV), dtype)
            OUT = T.match_buffer(o_h, (B, H, SQ, DV), dtype)
            body(Q, K, V, IDX, MASK, OUT)

    else:

        @T.prim_func
        def sparse(q_h: T.handle, k_h: T.handle, v_h: T.handle, i_h: T.handle, o_h: T.handle):
            T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True, EXACT_BUFFERS: True})
            B, H, SQ, SKV, KK = T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
            Q = T.match_buffer(q_h, (B, H, SQ, D), dtype)
            K = T.match_buffer(k_h, (B, kv_heads, SKV, D), dtype)
            V = T.match_buffer(v_h, (B, kv_heads, SKV, DV), dtype)
            IDX = T.match_buffer(i_h, (B, idx_heads, SQ, KK), "int32")
            OUT = T.match_buffer(o_h, (B, H, SQ, DV), dtype)
            body(Q, K, V, IDX, None, OUT)

    return sparse
