"""Sparse attention: float softmax·V over the gathered top-k keys of each (head, query row).

q [B,H,Sq,D], k [B,Hkv,Skv,D], v [B,Hkv,Skv,Dv], idx [B,H,Sq,K] int32 (-1 = unused slot),
optional additive mask [Bm,Hm,Sq,Skv] (Bm in {1,B}, Hm in {1,H}) -> out [B,H,Sq,Dv].
Accumulation is float32 and the softmax subtracts the row max, so fp16 inputs stay stable.
K/V rows are gathered through `kv_head`: GQA never materialises repeated K/V.

With static D (a multiple of 16) and Dv (a multiple of 8) the kernel is hand-written, already
scheduled TIR (attr ``tirx.is_scheduled``, see `_sparse_cpu`): tiles of query rows x the query
heads of one KV head, logits for 8 keys at once (q's vectors in the outer loop, the keys' K rows
read side by side) and a transposed (shuffle-add) reduction, an exact vectorised softmax, p·V
vectorised over Dv, vector widths from the target (`_isa`). Trailing -1 slots are skipped; -1
slots anywhere else are ignored. A row whose slots are all -1 sees no key (every key masked): it
gets what the dense block gives it, the softmax over all its causally allowed keys of scale·q·k +
mask (NaN when every logit is -inf, as dense softmax).
Other shapes fall back to a TE definition that `targets.cpu_kernels` schedules.

`sparse_attention_group` is the "group" mode: one selection per KV head and query row,
idx [B,Hkv,Sq,K] (`topk_group.topk_group_indices`), shared by the group's query heads, so each
gathered K/V row serves all of them (static head dims only).
"""
from __future__ import annotations

from .._compat import te, tirx
from ._cache import kernel_cache
from ._isa import current_isa
from ._shapes import fresh_shape, kv_head
from ._sparse_cpu import sparse_kernel

_LANES = 8


def _static(dim):
    return dim if isinstance(dim, int) else getattr(dim, "value", None)


def has_fast_kernel(head_dim, v_dim) -> bool:
    """The hand-written kernel applies (static D a multiple of 16, Dv of 8). Only it gives rows
    without a visible key the dense block's value; the TE form writes 0 there."""
    d, dv = _static(head_dim), _static(v_dim)
    return d is not None and dv is not None and d % (2 * _LANES) == 0 and dv % _LANES == 0


@kernel_cache
def sparse_attention(block, q_shape, kv_len, v_dim, top_k, mask_shape=None, isa=None):
    if has_fast_kernel(q_shape[3], v_dim):
        return sparse_kernel(block, int(_static(q_shape[3])), int(_static(v_dim)), mask_shape, current_isa(isa))
    return _sparse_attention_te(block, q_shape, kv_len, v_dim, top_k, mask_shape)


@kernel_cache
def sparse_attention_group(block, q_shape, kv_len, v_dim, top_k, mask_shape=None, isa=None):
    """Group mode: (q, k, v, idx [B,Hkv,Sq,K][, mask], out) -> None; static head dims only."""
    if not has_fast_kernel(q_shape[3], v_dim):
        raise ValueError(f"group-mode sparse attention needs static head dims (D a multiple of 16, Dv of 8), "
                         f"got {q_shape[3]}/{v_dim}")
    return sparse_kernel(block, int(_static(q_shape[3])), int(_static(v_dim)), mask_shape, current_isa(isa),
                         group_mode=True)


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
