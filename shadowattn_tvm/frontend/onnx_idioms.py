"""Exporter idioms around attention, rewritten after ONNX import so `DetectAttention` sees the
explicit form (see `frontend/onnx.py`'s docstring for the three idioms and why each is exact).
"""
from __future__ import annotations

import numpy as np

from .._compat import constant_value, relax, tvm


def canonicalize_attention(mod: tvm.IRModule) -> tvm.IRModule:
    """Rewrite three idioms of exported scaled_dot_product_attention into the explicit form
    `DetectAttention` reads (each exact for finite inputs; see the module docstring)."""
    from tvm.relax import dpl

    rules = (_split_scale_rule(dpl), _flat_transpose_rule(dpl), _nan_guard_rule(dpl))
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            for pattern, rewriter in rules:
                func = dpl.rewrite_call(pattern, rewriter, func)
            mod[gv] = func
    return relax.transform.DeadCodeElimination()(mod)


def _scalar(expr):
    value = constant_value(expr)
    return float(value.reshape(())) if value is not None and value.size == 1 and value.dtype.kind == "f" else None


def _split_scale_rule(dpl):
    """softmax(matmul(q * a, kᵀ * b) [+ mask]) -> softmax(matmul(q, kᵀ) * (a·b) [+ mask]): torch's SDPA
    decomposition scales Q and Kᵀ by sqrt(scale) each; detection reads one scale on the scores."""
    q, kt, a, b, mask = dpl.wildcard(), dpl.wildcard(), dpl.is_const(), dpl.is_const(), dpl.wildcard()
    mm = dpl.is_op("relax.matmul")(dpl.is_op("relax.multiply")(q, a), dpl.is_op("relax.multiply")(kt, b))
    added = dpl.is_op("relax.add")(mm, mask)
    pattern = dpl.is_op("relax.nn.softmax")(mm | added)

    def rewrite(expr, m):
        sa, sb = _scalar(m[a]), _scalar(m[b])
        if sa is None or sb is None:
            return expr
        dtype = str(m[mm].ty.dtype)
        scores = relax.op.multiply(relax.op.matmul(m[q], m[kt]), relax.const(sa * sb, dtype))
        if added in m:
            scores = relax.op.add(scores, m[mask])
        return relax.op.nn.softmax(scores, axis=int(expr.attrs.axis))

    return pattern, rewrite


def _flat_transpose_rule(dpl):
    """reshape(permute(reshape(x, [N, A, B]), [0, 2, 1]), [d0, d1, B, A]) with d0·d1 = N ->
    permute(reshape(x, [d0, d1, A, B]), [0, 1, 3, 2]): Kᵀ through a 3-D batched transpose."""
    x = dpl.wildcard()
    flat = dpl.is_op("relax.reshape")(x, dpl.wildcard())
    trans = dpl.is_op("relax.permute_dims")(flat)
    pattern = dpl.is_op("relax.reshape")(trans, dpl.wildcard())

    def rewrite(expr, m):
        s3, s4 = _static_shape(m[flat]), _static_shape(expr)
        axes = m[trans].attrs.axes
        if s3 is None or s4 is None or len(s3) != 3 or len(s4) != 4 or axes is None or [int(i) for i in axes] != [0, 2, 1]:
            return expr
        n, a, b = s3
        if s4[0] * s4[1] != n or s4[2:] != [b, a]:
            return expr
        k = m[x] if _static_shape(m[x]) == [s4[0], s4[1], a, b] else relax.op.reshape(m[x], [s4[0], s4[1], a, b])
        return relax.op.permute_dims(k, [0, 1, 3, 2])

    return pattern, rewrite


def _nan_guard_rule(dpl):
    """where(isnan(p), 0, p) with p = softmax(s + mask) -> p, when every row of the constant mask has
    a finite entry (then no row is all -inf and p has no NaN for finite scores)."""
    scores, mask, zero = dpl.wildcard(), dpl.is_const(), dpl.is_const()
    softmax = dpl.is_op("relax.nn.softmax")(dpl.is_op("relax.add")(scores, mask))
    pattern = dpl.is_op("relax.where")(dpl.is_op("relax.isnan")(softmax), zero, softmax)

    def rewrite(expr, m):
        fill, value = _scalar(m[zero]), constant_value(m[mask])
        if fill != 0.0 or value is None or int(m[softmax].attrs.axis) not in (-1, value.ndim - 1):
            return expr
        return m[softmax] if bool(np.isfinite(value).any(axis=-1).all()) else expr

    return pattern, rewrite


def _static_shape(expr):
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = [getattr(d, "value", None) for d in ty.shape.values]
    return None if any(not isinstance(d, int) for d in dims) else dims
