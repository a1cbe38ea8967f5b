"""Build attention blocks as Relax modules in many concrete forms (see `AttentionSpec`).

Inputs are q [B,Sq,H,D], k/v [B,Skv,Hkv,D] (BSNH, as projections produce them) and, for the
padding form, an additive mask [B,1,1,Skv]; the output is [B,Sq,H,D].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._compat import relax
from ..block import AttentionBlock, CausalMode, KVMap, max_keep_count
from ..ops import reference

GQA_FORMS = ("none", "repeat", "expand", "mqa_broadcast", "tile")
MASK_FORMS = ("none", "causal_const", "causal_where", "causal_triu", "padding", "causal_top_left")
SCALE_FORMS = ("multiply", "divide", "on_q", "none")


@dataclass(frozen=True)
class AttentionSpec:
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    q_len: int = 32
    kv_len: int | None = None  # None: same as q_len
    batch: int = 1
    dtype: str = "float32"
    form: str = "softmax"  # or "nn.attention"
    gqa: str = "repeat"
    mask: str = "causal_const"
    scale: str = "multiply"
    symbolic: bool = False  # sequence lengths as symbolic vars

    @property
    def kv_length(self) -> int:
        return self.q_len if self.kv_len is None else self.kv_len

    def block(self) -> AttentionBlock:
        """The canonical block detection should find (mask-free forms only)."""
        causal = {"none": CausalMode.NONE, "padding": CausalMode.NONE,
                  "causal_top_left": CausalMode.TOP_LEFT}.get(self.mask, CausalMode.BOTTOM_RIGHT)
        kv_heads = {"none": self.heads, "mqa_broadcast": 1}.get(self.gqa, self.kv_heads)
        scale = 1.0 if self.scale == "none" and self.form == "softmax" else 1.0 / math.sqrt(self.head_dim)
        return AttentionBlock(layer=0, num_heads=self.heads, num_kv_heads=kv_heads, head_dim=self.head_dim,
                              causal=causal, scale=scale, dtype=self.dtype,
                              kv_map=KVMap.TILE if self.gqa == "tile" else KVMap.INTERLEAVE,
                              has_mask=self.mask == "padding")


def _lengths(spec: AttentionSpec):
    if not spec.symbolic:
        return spec.q_len, spec.kv_length
    from .._compat import tirx

    n = tirx.Var("n", "int64")
    if spec.kv_len is None:
        return n, n
    return n, tirx.Var("m", "int64")


def attention_module(spec: AttentionSpec) -> "relax.IRModule":
    """One Relax function `main(q, k, v[, mask])` computing attention in the spec's form."""
    sq, skv = _lengths(spec)
    b, h, d = spec.batch, spec.heads, spec.head_dim
    hkv = h if spec.gqa == "none" else (1 if spec.gqa == "mqa_broadcast" else spec.kv_heads)
    q = relax.Var("q", relax.TensorType((b, sq, h, d), spec.dtype))
    k = relax.Var("k", relax.TensorType((b, skv, hkv, d), spec.dtype))
    v = relax.Var("v", relax.TensorType((b, skv, hkv, d), spec.dtype))
    params = [q, k, v]
    if spec.mask == "padding":
        params.append(relax.Var("mask", relax.TensorType((b, 1, 1, skv), spec.dtype)))
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = _fused(bb, spec, params) if spec.form == "nn.attention" else _explicit(bb, spec, params, sq, skv)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    return bb.get()


def _fused(bb, spec, params):
    q, k, v = params[:3]
    causal = {"none": None, "causal_top_left": "TopLeft"}.get(spec.mask, "BottomRight")
    if spec.mask == "padding":
        return bb.emit(relax.op.nn.attention(q, k, v, params[3], causal_mask=None))
    return bb.emit(relax.op.nn.attention(q, k, v, causal_mask=causal))


def _repeat(bb, spec, x, group):
    if spec.gqa == "repeat":
        return bb.emit(relax.op.repeat(x, group, axis=1))
    if spec.gqa == "tile":
        return bb.emit(relax.op.tile(x, [1, group, 1, 1]))
    b, hkv, s, d = x.ty.shape.values
    if spec.gqa == "expand":  # HF repeat_kv: x[:, :, None].expand(...).reshape(...)
        e = bb.emit(relax.op.expand_dims(x, 2))
        e = bb.emit(relax.op.broadcast_to(e, relax.ShapeExpr([b, hkv, group, s, d])))
        return bb.emit(relax.op.reshape(e, relax.ShapeExpr([b, hkv * group, s, d])))
    if spec.gqa == "mqa_broadcast":
        return bb.emit(relax.op.broadcast_to(x, relax.ShapeExpr([b, spec.heads, s, d])))
    return x


def _explicit(bb, spec, params, sq, skv):
    dt = spec.dtype
    q, k, v = (bb.emit(relax.op.permute_dims(x, [0, 2, 1, 3])) for x in params[:3])
    group = spec.heads // (k.ty.shape.values[1].value)
    k, v = _repeat(bb, spec, k, group), _repeat(bb, spec, v, group)
    scale = 1.0 / math.sqrt(spec.head_dim)
    if spec.scale == "on_q":
        q = bb.emit(relax.op.multiply(q, relax.const(scale, dt)))
    s = bb.emit(relax.op.matmul(q, bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))))
    if spec.scale == "multiply":
        s = bb.emit(relax.op.multiply(s, relax.const(scale, dt)))
    elif spec.scale == "divide":
        s = bb.emit(relax.op.divide(s, relax.const(math.sqrt(spec.head_dim), dt)))
    s = _apply_mask(bb, spec, s, params, sq, skv)
    if dt == "float16":  # as fp16 exporters do: softmax in fp32
        p = bb.emit(relax.op.astype(relax.op.nn.softmax(relax.op.astype(s, "float32"), axis=-1), dt))
    else:
        p = bb.emit(relax.op.nn.softmax(s, axis=-1))
    o = bb.emit(relax.op.matmul(p, v))
    return bb.emit(relax.op.permute_dims(o, [0, 2, 1, 3]))


def _apply_mask(bb, spec, s, params, sq, skv):
    dt = spec.dtype
    neg = float(np.finfo(np.float16).min) if dt == "float16" else float("-inf")
    if spec.mask == "none":
        return s
    if spec.mask == "padding":
        return bb.emit(relax.op.add(s, params[3]))
    if spec.mask == "causal_const":  # what FoldConstant leaves of a static-length export
        assert not spec.symbolic, "causal_const needs static lengths"
        m = np.triu(np.full((spec.q_len, spec.kv_length), neg, dt), k=spec.kv_length - spec.q_len + 1)
        return bb.emit(relax.op.add(s, relax.const(m[None, None], dt)))
    if spec.mask in ("causal_where", "causal_top_left"):  # where(j <= i + off, s, -inf) from aranges
        off = 0 if spec.mask == "causal_top_left" else skv - sq
        i = bb.emit(relax.op.reshape(relax.op.arange(relax.prim_value(0), relax.prim_value(sq), dtype="int64"),
                                     relax.ShapeExpr([sq, 1])))
        j = bb.emit(relax.op.arange(relax.prim_value(0), relax.prim_value(skv), dtype="int64"))
        if not isinstance(off, int):
            assert sq is skv, "symbolic causal_where needs q_len == kv_len"
            off = 0
        shifted = bb.emit(relax.op.add(i, relax.const(off, "int64"))) if off else i
        cond = bb.emit(relax.op.less_equal(j, shifted))
        return bb.emit(relax.op.where(cond, s, relax.const(neg, dt)))
    if spec.mask == "causal_triu":  # triu of a constant -inf square, sliced to the lengths
        assert spec.q_len == spec.kv_length, "causal_triu is for self-attention"
        big = np.triu(np.full((spec.q_len, spec.q_len), neg, dt), k=1)
        return bb.emit(relax.op.add(s, relax.const(big, dt)))
    raise ValueError(f"unknown mask form {spec.mask!r}; known: {MASK_FORMS}")


def random_inputs(spec: AttentionSpec, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    hkv = spec.heads if spec.gqa == "none" else (1 if spec.gqa == "mqa_broadcast" else spec.kv_heads)
    b, sq, skv, d = spec.batch, spec.q_len, spec.kv_length, spec.head_dim
    arrays = [rng.standard_normal((b, sq, spec.heads, d)), rng.standard_normal((b, skv, hkv, d)),
              rng.standard_normal((b, skv, hkv, d))]
    if spec.mask == "padding":
        pad = np.zeros((b, 1, 1, skv))
        pad[..., : max(1, skv // 8)] = -1e9 if spec.dtype == "float32" else -65504.0  # left padding
        arrays.append(pad)
    return [a.astype(spec.dtype) for a in arrays]


def _canonical(spec: AttentionSpec, inputs):
    """(block, q, k, v, mask) in BHSD as the detection pass sees them."""
    block = spec.block()
    q, k, v = (x.transpose(0, 2, 1, 3) for x in inputs[:3])
    mask = inputs[3] if spec.mask == "padding" else None
    return block, q, k, v, mask


def dense_reference(spec: AttentionSpec, inputs) -> np.ndarray:
    """Float64 dense attention of the spec on `inputs`, in the module's [B,Sq,H,D] layout."""
    block, q, k, v, mask = _canonical(spec, inputs)
    return reference.dense_attention(q, k, v, block, mask).transpose(0, 2, 1, 3)


def sparse_reference(spec: AttentionSpec, inputs, ratios, k_min: int, q_scales=None, k_scales=None,
                     selection: str = "head"):
    """What the shadowAttn build must output: numpy pilot (same int8 scores) -> top-k -> sparse.

    Returns (output [B,Sq,H,D], indices [B,H,Sq,K] (group selection: [B,Hkv,Sq,K]), int32 scores).
    Dynamic scales unless given. Group selection keeps by the mean ratio of each KV group's heads.
    """
    block, q, k, v, mask = _canonical(spec, inputs)
    qs = reference.absmax_scale(q) if q_scales is None else np.asarray(q_scales, np.float32)
    ks = reference.absmax_scale(k) if k_scales is None else np.asarray(k_scales, np.float32)
    scores = reference.pilot_scores(reference.quantize(q, qs), reference.quantize(k, ks), block)
    if selection == "group":
        group_ratios = np.asarray(block.group_ratios(ratios))
        top_k = max_keep_count(group_ratios.max(), k.shape[2], k_min)
        idx = reference.topk_group_indices(scores, group_ratios, block, k_min, top_k, qs, ks, mask=mask)
        out = reference.sparse_attention_group(q, k, v, idx, block, mask)
        return out.transpose(0, 2, 1, 3), idx, scores
    top_k = max_keep_count(max(ratios), k.shape[2], k_min)
    idx = reference.topk_indices(scores, np.asarray(ratios, np.float64), block, k_min, top_k,
                                 mask=mask, q_scale=qs, k_scale=ks)
    out = reference.sparse_attention(q, k, v, idx, block, mask)
    return out.transpose(0, 2, 1, 3), idx, scores


def stacked_module(layers: int = 2, spec: AttentionSpec | None = None) -> "relax.IRModule":
    """`layers` attention blocks in sequence (each block's output is the next one's Q)."""
    spec = spec or AttentionSpec(gqa="none")
    shape = (spec.batch, spec.q_len, spec.heads, spec.head_dim)
    params = [relax.Var(n, relax.TensorType(shape, spec.dtype)) for n in "qkv"]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            x = params[0]
            for _ in range(layers):
                x = _explicit(bb, spec, [x] + params[1:], spec.q_len, spec.q_len)
            out = bb.emit_output(x)
        bb.emit_func_output(out)
    return bb.get()
