"""Sparse decode: the INT8 pilot picks the keys one decode step attends to (beyond the paper).

For a long prompt, each decode step's query row per head is quantised with its layer's static
scale and scored against an INT8 copy of the cached keys (``k8 [layers, kv_heads, capacity,
head_dim]``, written with the calibrated static K scale as keys enter the cache, as an NPU would
keep it); the row keeps k = min(n, max(k_min, ceil(ratio * n))) of its n keys, ties to the lower
index (`block.keep_count`, the prefill rule), and float attention runs over those keys only.

    kv_quantize(k8, k, start, layer, ks)                          k8 rows start.. <- round(k / ks)
    sparse_decode_attention(q, kv, k8, pos, layer, qs, ratios) -> out [1, 1, H, D]

The selection needs no index list: the k-th largest score is found by a radix select (256-bin
histograms of the scores, narrowed to the bin that holds it: three passes), and the attention
pass takes every key above it plus the first ties in index order. Scales and ratios come as [layers, heads] tensors, so one kernel serves every layer.
"""
from __future__ import annotations

from .._compat import EXACT_BUFFERS, fast_script_parsing, tirx
from ..block import CEIL_EPS
from tvm.script import tirx as T

_LANES = 16


@fast_script_parsing()
def kv_quantize(layers: int, kv_heads: int, capacity: int, head_dim: int, rows: int):
    """In place: k8[layer, h, start + r, :] = clip(round(k[0, r, h, :] / ks[layer, h]), -127, 127)."""
    L, HKV, C, D, R = layers, kv_heads, capacity, head_dim, rows

    @T.prim_func(private=True)
    def quantize(k8_h: T.handle, k_h: T.handle, s_h: T.handle, layer: T.int64, ks_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, EXACT_BUFFERS: True})
        K8 = T.match_buffer(k8_h, (L, HKV, C, D), "int8")
        K = T.match_buffer(k_h, (1, R, HKV, D), "float32")
        START = T.match_buffer(s_h, (1,), "int32")
        KS = T.match_buffer(ks_h, (L, HKV), "float32")
        for r in T.parallel(R):
            pos = T.Bind(T.Cast("int64", START[0]) + r)
            if pos < C:
                for h in range(HKV):
                    for d in T.vectorized(D):
                        K8[layer, h, pos, d] = T.Cast("int8", T.max(T.min(T.round(K[0, r, h, d] / KS[layer, h]),
                                                                          T.float32(127)), T.float32(-127)))

    return quantize


@fast_script_parsing()
def sparse_decode_attention(heads: int, kv_heads: int, capacity: int, head_dim: int, scale: float, k_min: int,
                            window: int = 0):
    """One decode row per head over the keys its INT8 scores rank highest (see the module docstring)."""
    H, HKV, C, D = heads, kv_heads, capacity, head_dim
    group = H // HKV
    neg_inf = tirx.const(float("-inf"), "float32")
    LN = _LANES if D % _LANES == 0 else 1
    W = window if window else C + 1

    @T.prim_func(private=True)
    def attend(q_h: T.handle, kv_h: T.handle, k8_h: T.handle, p_h: T.handle, layer: T.int64, qs_h: T.handle,
               r_h: T.handle, o_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, EXACT_BUFFERS: True})
        L = T.int64()
        Q = T.match_buffer(q_h, (1, 1, H, D), "float32")
        KV = T.match_buffer(kv_h, (L, 2, HKV, C, D), "float32")
        K8 = T.match_buffer(k8_h, (L, HKV, C, D), "int8")
        POS = T.match_buffer(p_h, (1,), "int32")
        QS = T.match_buffer(qs_h, (L, H), "float32")
        RATIO = T.match_buffer(r_h, (L, H), "float32")
        OUT = T.match_buffer(o_h, (1, 1, H, D), "float32")
        for h in T.parallel(H):
            scores = T.alloc_buffer((C,), "int32", scope="global")
            logits = T.alloc_buffer((C,), "float32", scope="global")
            q8 = T.alloc_buffer((D,), "int32", scope="global")
            acc = T.alloc_buffer((D,), "float32", scope="global")
            part = T.alloc_buffer((LN,), "float32", scope="global")
            ipart = T.alloc_buffer((LN,), "int32", scope="global")
            ms = T.alloc_buffer((2,), "float32", scope="global")  # running max, sum
            hist = T.alloc_buffer((256,), "int32", scope="global")
            sel = T.alloc_buffer((1,), "int32", scope="global")
            # 0 range start, 1 range width, 2 count, 3 keys to keep, 4 ties to take, 5 min score, 6 max score
            st = T.alloc_buffer((7,), "int64", scope="global")
            hk = T.Bind(h // group)
            hi = T.Bind(T.min(T.Cast("int64", POS[0]), T.int64(C - 1)))
            lo = T.Bind(T.max(hi - T.int64(W) + 1, T.int64(0)))
            n = T.Bind(hi - lo + 1)
            for d in range(D):
                q8[d] = T.Cast("int32", T.max(T.min(T.round(Q[0, 0, h, d] / QS[layer, h]), T.float32(127)),
                                              T.float32(-127)))
            st[5] = T.int64(1 << 40)
            st[6] = -T.int64(1 << 40)
            for j in range(n):
                for e in T.vectorized(LN):
                    ipart[e] = 0
                for dd in range(D // LN):
                    for e in T.vectorized(LN):
                        ipart[e] = ipart[e] + q8[dd * LN + e] * T.Cast("int32", K8[layer, hk, lo + j, dd * LN + e])
                scores[j] = 0
                for e in range(LN):
                    scores[j] = scores[j] + ipart[e]
                st[5] = T.min(st[5], T.Cast("int64", scores[j]))
                st[6] = T.max(st[6], T.Cast("int64", scores[j]))
            # keys kept: min(n, max(k_min, ceil(ratio * kv_len))), kv_len = pos + 1 keys in the cache
            st[3] = T.min(n, T.max(T.int64(k_min), T.Cast("int64", T.ceil(
                RATIO[layer, h] * T.Cast("float32", hi + 1) - T.float32(CEIL_EPS)))))
            # radix select of the k-th largest score: 256-bin histograms over [st[0], st[0] + st[1]),
            # narrowed to the bin holding it until one value is left (3 passes for int8 x int8 x D <= 128)
            st[0] = st[5]
            st[1] = st[6] - st[5] + 1
            st[4] = st[3]  # keys still to place at or below the current range
            while st[1] > 1:
                width = T.Bind((st[1] + 255) // 256)
                for b in range(256):
                    hist[b] = 0
                for j in range(n):
                    off = T.Bind(T.Cast("int64", scores[j]) - st[0])
                    if off >= 0 and off < st[1]:
                        hist[off // width] = hist[off // width] + 1
                st[2] = 0  # keys in the bins above the one scanned
                sel[0] = -1
                for b in range(256):
                    if sel[0] < 0:
                        if st[2] + T.Cast("int64", hist[255 - b]) >= st[4]:
                            sel[0] = T.Cast("int32", 255 - b)
                        else:
                            st[2] = st[2] + T.Cast("int64", hist[255 - b])
                st[4] = st[4] - st[2]
                st[0] = st[0] + T.Cast("int64", sel[0]) * width
                st[1] = T.min(width, st[6] + 1 - st[0])
            # st[0]: the threshold; st[4]: how many ties at it to take, in index order
            ms[0] = neg_inf
            for j in range(n):
                logits[j] = neg_inf
                take = T.Bind(T.Cast("int64", scores[j]) > st[0] or (T.Cast("int64", scores[j]) == st[0] and st[4] > 0))
                if take:
                    if T.Cast("int64", scores[j]) == st[0]:
                        st[4] = st[4] - 1
                    for e in T.vectorized(LN):
                        part[e] = T.float32(0)
                    for dd in range(D // LN):
                        for e in T.vectorized(LN):
                            part[e] = part[e] + Q[0, 0, h, dd * LN + e] * KV[layer, 0, hk, lo + j, dd * LN + e]
                    logits[j] = T.float32(0)
                    for e in range(LN):
                        logits[j] = logits[j] + part[e]
                    logits[j] = logits[j] * T.float32(scale)
                    ms[0] = T.max(ms[0], logits[j])
            ms[1] = T.float32(0)
            for d in T.vectorized(D):
                acc[d] = T.float32(0)
            for j in range(n):
                if logits[j] > neg_inf:
                    p = T.Bind(tirx.exp(logits[j] - ms[0]))
                    ms[1] = ms[1] + p
                    for d in T.vectorized(D):
                        acc[d] = acc[d] + p * KV[layer, 1, hk, lo + j, d]
            for d in T.vectorized(D):
                OUT[0, 0, h, d] = acc[d] / ms[1]

    return attend


def numpy_reference(q, k, v, k8, qs, ratio, k_min: int, scale: float, group: int):
    """The same step in numpy: q [H, D], k/v [Hkv, n, D] float, k8 [Hkv, n, D] int8, qs/ratio [H]."""
    import math

    import numpy as np

    out = np.zeros(q.shape, np.float64)
    for h in range(q.shape[0]):
        hk, n = h // group, k.shape[1]
        q8 = np.clip(np.rint(q[h] / np.float32(qs[h])), -127, 127).astype(np.int64)
        scores = k8[hk].astype(np.int64) @ q8
        keep = min(n, max(k_min, math.ceil(float(np.float32(ratio[h])) * n - CEIL_EPS)))
        order = np.lexsort((np.arange(n), -scores))[:keep]
        logits = (k[hk, order].astype(np.float64) @ q[h].astype(np.float64)) * scale
        p = np.exp(logits - logits.max())
        out[h] = (p[:, None] * v[hk, order]).sum(0) / p.sum()
    return out


__all__ = ["kv_quantize", "numpy_reference", "sparse_decode_attention"]
