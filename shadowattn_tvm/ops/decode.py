"""Kernels of text generation over a static-capacity KV cache (hand-written TIR, scheduled).

The cache of a model is one tensor ``kv [layers, 2, kv_heads, capacity, head_dim]`` (K then V,
keys after RoPE), updated in place:

    kv_write(kv, k, v, start, layer)       rows start..start+R-1 of `layer` <- k, v [1, R, Hkv, D]
    decode_attention(q, kv, pos, layer)    one query row per head over keys 0..pos (dense)

Positions come as a one-element int32 tensor, so one compiled decode step serves every position.
A row past the capacity is not written (the caller checks the length; see `generate.session`).
"""
from __future__ import annotations

import math

from .._compat import EXACT_BUFFERS, fast_script_parsing, tirx
from tvm.script import tirx as T

_LANES = 16


def _exp(x):
    return tirx.exp(x)


@fast_script_parsing()
def kv_write(layers: int, kv_heads: int, capacity: int, head_dim: int, rows: int, dtype: str = "float32"):
    """In place: kv[layer, 0|1, :, start + r, :] = k|v[0, r, :, :] for r < rows (start from a tensor)."""
    L, HKV, C, D, R = layers, kv_heads, capacity, head_dim, rows

    @T.prim_func(private=True)
    def write(kv_h: T.handle, k_h: T.handle, v_h: T.handle, s_h: T.handle, layer: T.int64):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, EXACT_BUFFERS: True})
        KV = T.match_buffer(kv_h, (L, 2, HKV, C, D), dtype)
        K = T.match_buffer(k_h, (1, R, HKV, D), dtype)
        V = T.match_buffer(v_h, (1, R, HKV, D), dtype)
        START = T.match_buffer(s_h, (1,), "int32")
        for r in T.parallel(R):
            pos = T.Bind(T.Cast("int64", START[0]) + r)
            if pos < C:
                for h in range(HKV):
                    for d in T.vectorized(D):
                        KV[layer, 0, h, pos, d] = K[0, r, h, d]
                        KV[layer, 1, h, pos, d] = V[0, r, h, d]

    return write


@fast_script_parsing()
def decode_attention(heads: int, kv_heads: int, capacity: int, head_dim: int, scale: float, window: int = 0,
                     dtype: str = "float32"):
    """out[0, 0, h] = softmax_j(scale * q[0, 0, h] . K[j]) V[j] over keys j = lo..pos of the cache
    (lo = 0, or pos - window + 1 with a sliding window); GQA: query head h reads KV head h // group."""
    H, HKV, C, D = heads, kv_heads, capacity, head_dim
    group = H // HKV
    neg_inf = tirx.const(float("-inf"), "float32")
    LN = _LANES if D % _LANES == 0 else 1
    W = window if window else C + 1  # keys further back than W - 1 are out of the window

    @T.prim_func(private=True)
    def attend(q_h: T.handle, kv_h: T.handle, p_h: T.handle, layer: T.int64, o_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, EXACT_BUFFERS: True})
        L = T.int64()
        Q = T.match_buffer(q_h, (1, 1, H, D), dtype)
        KV = T.match_buffer(kv_h, (L, 2, HKV, C, D), dtype)
        POS = T.match_buffer(p_h, (1,), "int32")
        OUT = T.match_buffer(o_h, (1, 1, H, D), dtype)
        for h in T.parallel(H):
            logits = T.alloc_buffer((C,), "float32", scope="global")
            acc = T.alloc_buffer((D,), "float32", scope="global")
            part = T.alloc_buffer((LN,), "float32", scope="global")
            ms = T.alloc_buffer((2,), "float32", scope="global")  # running max, sum
            hk = T.Bind(h // group)
            hi = T.Bind(T.min(T.Cast("int64", POS[0]), T.int64(C - 1)))
            lo = T.Bind(T.max(hi - T.int64(W) + 1, T.int64(0)))
            ms[0] = neg_inf
            for j in range(hi - lo + 1):
                for e in T.vectorized(LN):
                    part[e] = T.float32(0)
                for dd in range(D // LN):
                    for e in T.vectorized(LN):
                        part[e] = part[e] + T.Cast("float32", Q[0, 0, h, dd * LN + e]) * T.Cast(
                            "float32", KV[layer, 0, hk, lo + j, dd * LN + e])
                logits[j] = T.float32(0)
                for e in range(LN):
                    logits[j] = logits[j] + part[e]
                logits[j] = logits[j] * T.float32(scale)
                ms[0] = T.max(ms[0], logits[j])
            ms[1] = T.float32(0)
            for d in T.vectorized(D):
                acc[d] = T.float32(0)
            for j in range(hi - lo + 1):
                p = T.Bind(_exp(logits[j] - ms[0]))
                ms[1] = ms[1] + p
                for d in T.vectorized(D):
                    acc[d] = acc[d] + p * T.Cast("float32", KV[layer, 1, hk, lo + j, d])
            for d in T.vectorized(D):
                OUT[0, 0, h, d] = T.Cast(dtype, acc[d] / ms[1])

    return attend


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


__all__ = ["decode_attention", "default_scale", "kv_write"]
