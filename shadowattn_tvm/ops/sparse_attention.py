"""Sparse attention: float softmax·V over the gathered top-k keys of each (head, query row).

q [B,H,Sq,D], k [B,Hkv,Skv,D], v [B,Hkv,Skv,Dv], idx [B,H,Sq,K] int32 (-1 = unused slot),
optional additive mask [Bm,Hm,Sq,Skv] (Bm in {1,B}, Hm in {1,H}) -> out [B,H,Sq,Dv].
Accumulation is float32 and the softmax subtracts the row max, so fp16 inputs stay stable.
K/V rows are gathered through `kv_head`: GQA never materialises repeated K/V.

With static D (a multiple of 16) and Dv (a multiple of 8) the kernel is hand-written, already
scheduled TIR (attr ``tirx.is_scheduled``): one parallel task per block of query rows; a row
walks its slots in chunks of 16 with an online softmax (running max and sum, float32, exp as a
vectorised polynomial), the q·k dots use 8-lane FMAs over d (two partial-sum chains) and p·V
is vectorised over Dv. Trailing -1 slots are skipped; -1 slots anywhere else are ignored. A row
whose slots are all -1 sees no key (every key masked): it gets what the dense block gives it,
the softmax over all its causally allowed keys of scale·q·k + mask (NaN when every logit is
-inf, as dense softmax).
Other shapes fall back to a TE definition that `targets.cpu_kernels` schedules.
"""
from __future__ import annotations

from .._compat import T, te, tirx
from ..block import CausalMode, KVMap
from ._shapes import fresh_shape, kv_head

_CHUNK = 16  # slots per online-softmax step
_LANES = 8  # float32 lanes of the dot's partial sums (one AVX2 register)
_ROWS = 8  # query rows per parallel task


def _exp(x):
    """exp(x) for x <= 0 as vectorisable float32 arithmetic (LLVM would call scalar expf).

    x is clamped at -87 (exp there is ~1.6e-38, i.e. 0 next to the row max's 1); 2^n comes from
    the exponent bits and exp(r), |r| <= ln2/2, from its degree-7 Taylor polynomial (rel. error
    ~1e-8, below float32 rounding).
    """
    f32 = lambda v: tirx.const(v, "float32")  # noqa: E731
    x = tirx.max(x, f32(-87.0))
    n = tirx.floor(x * f32(1.4426950408889634) + f32(0.5))
    r = x - n * f32(0.693145751953125) - n * f32(1.4286068203094172e-06)
    poly = f32(1.0 / 5040)
    for c in (1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
        poly = poly * r + f32(c)
    two_n = tirx.reinterpret("float32", tirx.shift_left(n.astype("int32") + tirx.const(127, "int32"), tirx.const(23, "int32")))
    return poly * two_n


def _static(dim):
    return dim if isinstance(dim, int) else getattr(dim, "value", None)


def has_fast_kernel(head_dim, v_dim) -> bool:
    """The hand-written kernel applies (static D a multiple of 16, Dv of 8). Only it gives rows
    without a visible key the dense block's value; the TE form writes 0 there."""
    d, dv = _static(head_dim), _static(v_dim)
    return d is not None and dv is not None and d % (2 * _LANES) == 0 and dv % _LANES == 0


def sparse_attention(block, q_shape, kv_len, v_dim, top_k, mask_shape=None):
    if has_fast_kernel(q_shape[3], v_dim):
        return _sparse_attention_fast(block, int(_static(q_shape[3])), int(_static(v_dim)), mask_shape)
    return _sparse_attention_te(block, q_shape, kv_len, v_dim, top_k, mask_shape)


def _sparse_attention_fast(block, D: int, DV: int, mask_shape):
    has_mask = mask_shape is not None
    mask_b1 = has_mask and int(mask_shape[0]) == 1
    mask_h1 = has_mask and int(mask_shape[1]) == 1
    dtype = block.dtype
    group, kv_heads = block.group, block.num_kv_heads
    tiled = int(block.kv_map == KVMap.TILE)
    bottom_right = int(block.causal == CausalMode.BOTTOM_RIGHT)
    no_causal = int(block.causal == CausalMode.NONE)
    scale = float(block.scale)
    CH, LN = _CHUNK, _LANES
    neg_inf = tirx.const(float("-inf"), "float32")
    zero64 = tirx.const(0, "int64")

    def kvh(h):
        if group == 1:
            return h
        return (1 - tiled) * (h // group) + tiled * (h % kv_heads)

    def mask_add(MASK, b, h, i, key):
        if not has_mask:
            return tirx.const(0.0, "float32")
        return MASK[zero64 if mask_b1 else b, zero64 if mask_h1 else h, i, key].astype("float32")

    def logit(dot, MASK, b, h, i, key, dense_row):
        """dot * scale + mask; in a row without a visible key (the dense fallback) an fp16 block
        adds the mask in fp16, as the fp16 graph it replaces does (finite fills absorb the scores)."""
        value = dot * T.float32(scale) + mask_add(MASK, b, h, i, key)
        if not has_mask or dtype != "float16":
            return value
        rounded = (T.Cast(dtype, dot * T.float32(scale)) + MASK[zero64 if mask_b1 else b, zero64 if mask_h1 else h,
                                                                 i, key]).astype("float32")
        return T.Select(dense_row > zero64, rounded, value)

    def slot_key(IDX, b, h, i, t, dense_row):
        """The key of slot t: the top-k index, or t itself in a dense-fallback row."""
        return T.Select(dense_row > zero64, t, T.Cast("int64", IDX[b, h, i, t]))

    @T.macro
    def body(Q, K, V, IDX, MASK, OUT):
        B, H, SQ, SKV, KMAX = Q.shape[0], Q.shape[1], Q.shape[2], K.shape[2], IDX.shape[3]
        for blk in T.parallel((B * H * SQ + _ROWS - 1) // _ROWS):
            # "global" scope: small per-task stack buffers (TVM 0.27 turns "local" ones into
            # workspace calls that LLVM cannot keep in registers)
            qf = T.alloc_buffer((D,), "float32", scope="global")
            acc = T.alloc_buffer((DV,), "float32", scope="global")
            part = T.alloc_buffer((2 * LN,), "float32", scope="global")
            lg = T.alloc_buffer((CH,), "float32", scope="global")
            pv = T.alloc_buffer((CH,), "float32", scope="global")
            mi = T.alloc_buffer((1,), "int32", scope="global")
            # ms: 0 running max, 1 running sum, 2 chunk max, 3 rescale
            ms = T.alloc_buffer((4,), "float32", scope="global")
            # chunks to walk, used slots, 1 when the row sees no key (dense fallback: every key)
            nch = T.alloc_buffer((3,), "int64", scope="global")
            for r in range(T.min(T.int64(_ROWS), B * H * SQ - blk * _ROWS)):
                row = T.Bind(blk * _ROWS + r)
                b = T.Bind(row // (H * SQ))
                h = T.Bind(row // SQ % H)
                i = T.Bind(row % SQ)
                hk = T.Bind(kvh(h))
                for d in T.vectorized(D):
                    qf[d] = T.Cast("float32", Q[b, h, i, d])
                for e in T.vectorized(DV):
                    acc[e] = T.float32(0)
                ms[0] = neg_inf
                ms[1] = T.float32(0)
                # drop the trailing -1 slots (top-k pads the row's tail): 16 at a time, then 1
                nch[1] = KMAX
                mi[0] = -1
                while nch[1] >= CH and mi[0] < 0:
                    mi[0] = -1
                    for t in range(CH):
                        mi[0] = T.max(mi[0], IDX[b, h, i, nch[1] - CH + t])
                    if mi[0] < 0:
                        nch[1] = nch[1] - CH
                while nch[1] > zero64 and IDX[b, h, i, nch[1] - 1] < 0:
                    nch[1] = nch[1] - 1
                nch[2] = zero64
                if nch[1] == zero64:
                    # top-k found no visible key (every key masked or causally hidden): the row is what
                    # the dense block gives it, softmax over all causally allowed keys (all -inf: NaN)
                    nch[2] = T.int64(1)
                    nch[1] = T.max(T.min(SKV, i + 1 + bottom_right * (SKV - SQ) + no_causal * SKV), zero64)
                nch[0] = (nch[1] + CH - 1) // CH
                for c in range(nch[0]):
                    ms[2] = neg_inf
                    for t in range(CH):
                        tt = T.Bind(c * CH + t)
                        lg[t] = neg_inf
                        if tt < nch[1]:
                            if nch[2] > zero64 or IDX[b, h, i, tt] >= 0:
                                key = T.Bind(slot_key(IDX, b, h, i, tt, nch[2]))
                                # two partial-sum chains (even/odd 8-lane blocks of d) halve the FMA latency
                                for e in T.vectorized(2 * LN):
                                    part[e] = qf[e] * T.Cast("float32", K[b, hk, key, e])
                                for dd in T.unroll(D // (2 * LN) - 1):
                                    for e in T.vectorized(2 * LN):
                                        part[e] = part[e] + qf[(dd + 1) * 2 * LN + e] * T.Cast("float32", K[b, hk, key, (dd + 1) * 2 * LN + e])
                                lg[t] = logit((((part[0] + part[8]) + (part[4] + part[12])) + ((part[2] + part[10]) + (part[6] + part[14]))) + (((part[1] + part[9]) + (part[5] + part[13])) + ((part[3] + part[11]) + (part[7] + part[15]))), MASK, b, h, i, key, nch[2])
                        ms[2] = T.max(ms[2], lg[t])
                    if ms[2] > neg_inf:
                        mnew = T.Bind(T.max(ms[0], ms[2]))
                        ms[3] = _exp(ms[0] - mnew)
                        ms[0] = mnew
                        for t in T.vectorized(CH):
                            pv[t] = T.Select(lg[t] > neg_inf, _exp(lg[t] - mnew), T.float32(0))
                        ms[2] = T.float32(0)
                        for t in range(CH):
                            ms[2] = ms[2] + pv[t]
                        ms[1] = ms[1] * ms[3] + ms[2]
                        for e in T.vectorized(DV):
                            acc[e] = acc[e] * ms[3]
                        for t in range(CH):
                            if lg[t] > neg_inf:
                                key = T.Bind(slot_key(IDX, b, h, i, c * CH + t, nch[2]))
                                for e in T.vectorized(DV):
                                    acc[e] = acc[e] + pv[t] * T.Cast("float32", V[b, hk, key, e])
                if ms[1] > T.float32(0):
                    inv = T.Bind(T.float32(1) / ms[1])
                    for e in T.vectorized(DV):
                        OUT[b, h, i, e] = T.Cast(dtype, acc[e] * inv)
                elif nch[2] > zero64:
                    for e in T.vectorized(DV):
                        OUT[b, h, i, e] = T.Cast(dtype, T.float32("nan"))
                else:
                    for e in T.vectorized(DV):
                        OUT[b, h, i, e] = T.Cast(dtype, T.float32(0))

    if has_mask:

        @T.prim_func
        def sparse(q_h: T.handle, k_h: T.handle, v_h: T.handle, i_h: T.handle, m_h: T.handle, o_h: T.handle):
            T.func_attr({"global_symbol": "sat_sparse_attention", "tirx.noalias": True, "tirx.is_scheduled": True})
            B, H, SQ, SKV, KK, MB, MH = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
            Q = T.match_buffer(q_h, (B, H, SQ, D), dtype)
            K = T.match_buffer(k_h, (B, kv_heads, SKV, D), dtype)
            V = T.match_buffer(v_h, (B, kv_heads, SKV, DV), dtype)
            IDX = T.match_buffer(i_h, (B, H, SQ, KK), "int32")
            MASK = T.match_buffer(m_h, (MB, MH, SQ, SKV), dtype)
            OUT = T.match_buffer(o_h, (B, H, SQ, DV), dtype)
            body(Q, K, V, IDX, MASK, OUT)

    else:

        @T.prim_func
        def sparse(q_h: T.handle, k_h: T.handle, v_h: T.handle, i_h: T.handle, o_h: T.handle):
            T.func_attr({"global_symbol": "sat_sparse_attention", "tirx.noalias": True, "tirx.is_scheduled": True})
            B, H, SQ, SKV, KK = T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
            Q = T.match_buffer(q_h, (B, H, SQ, D), dtype)
            K = T.match_buffer(k_h, (B, kv_heads, SKV, D), dtype)
            V = T.match_buffer(v_h, (B, kv_heads, SKV, DV), dtype)
            IDX = T.match_buffer(i_h, (B, H, SQ, KK), "int32")
            OUT = T.match_buffer(o_h, (B, H, SQ, DV), dtype)
            body(Q, K, V, IDX, None, OUT)

    return sparse


def _sparse_attention_te(block, q_shape, kv_len, v_dim, top_k, mask_shape=None):
    """Generic TE definition (dynamic head dims): scheduled by `targets.cpu_kernels`."""
    b, h, sq, d = fresh_shape(q_shape, ("batch", "heads", "q_len", "head_dim"))
    skv, dv, kk = fresh_shape((kv_len, v_dim, top_k), ("kv_len", "v_dim", "top_k"))
    dtype = block.dtype
    q = te.placeholder((b, h, sq, d), dtype, name="q")
    k = te.placeholder((b, block.num_kv_heads, skv, d), dtype, name="k")
    v = te.placeholder((b, block.num_kv_heads, skv, dv), dtype, name="v")
    idx = te.placeholder((b, h, sq, kk), "int32", name="idx")
    inputs = [q, k, v, idx]
    mask = None
    if mask_shape is not None:
        mb, mh = (int(x) for x in mask_shape[:2])
        mask = te.placeholder((mb, mh, sq, skv), dtype, name="mask")
        inputs.append(mask)

    def kvh(hh):
        return kv_head(hh, block.group, block.num_kv_heads, block.kv_map)

    def key(bb, hh, i, t):
        return tirx.max(idx[bb, hh, i, t], 0).astype("int64")

    rd = te.reduce_axis((0, d), "rd")
    dot = te.compute(
        (b, h, sq, kk),
        lambda bb, hh, i, t: te.sum(
            q[bb, hh, i, rd].astype("float32") * k[bb, kvh(hh), key(bb, hh, i, t), rd].astype("float32"),
            axis=rd,
        ),
        name="dot",
    )
    neg_inf = tirx.const(float("-inf"), "float32")

    def logit(bb, hh, i, t):
        value = dot[bb, hh, i, t] * tirx.const(block.scale, "float32")
        if mask is not None:
            mrow = mask[0 if mb == 1 else bb, 0 if mh == 1 else hh, i, key(bb, hh, i, t)]
            value = value + mrow.astype("float32")
        return tirx.Select(idx[bb, hh, i, t] >= 0, value, neg_inf)

    logits = te.compute((b, h, sq, kk), logit, name="logits")
    rt = te.reduce_axis((0, kk), "rt")
    row_max = te.compute((b, h, sq), lambda bb, hh, i: te.max(logits[bb, hh, i, rt], axis=rt), name="row_max")
    prob = te.compute(
        (b, h, sq, kk),
        lambda bb, hh, i, t: tirx.Select(
            logits[bb, hh, i, t] > neg_inf, tirx.exp(logits[bb, hh, i, t] - row_max[bb, hh, i]), 0.0
        ),
        name="prob",
    )
    rt2 = te.reduce_axis((0, kk), "rt2")
    denom = te.compute((b, h, sq), lambda bb, hh, i: te.sum(prob[bb, hh, i, rt2], axis=rt2), name="denom")
    rt3 = te.reduce_axis((0, kk), "rt3")
    acc = te.compute(
        (b, h, sq, dv),
        lambda bb, hh, i, e: te.sum(
            prob[bb, hh, i, rt3] * v[bb, kvh(hh), key(bb, hh, i, rt3), e].astype("float32"), axis=rt3
        ),
        name="acc",
    )
    out = te.compute(
        (b, h, sq, dv),
        lambda bb, hh, i, e: tirx.Select(
            denom[bb, hh, i] > 0.0, acc[bb, hh, i, e] / denom[bb, hh, i], 0.0
        ).astype(dtype),
        name="out",
    )
    return te.create_prim_func(inputs + [out]).with_attr("global_symbol", "sat_sparse_attention")
