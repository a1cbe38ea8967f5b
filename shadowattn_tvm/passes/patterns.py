"""Attention patterns (tvm.relax.dpl) and the `_check_*`/peel helpers for what DPL cannot express.

Two frames are recognised:
- `softmax_attention_pattern`: ``matmul(softmax(S) [astype] [reshape], V)``; a reshape (BLOOM's
  4-D softmax between 3-D batched matmuls) is matched so that the report lists the block, which
  stays dense. What feeds S (scale, mask, Q·Kᵀ, head split, GQA repeat) varies too much between
  exporters for one DPL pattern, so `peel_scores` walks it binding by binding and names the first
  thing it does not understand.
- `fused_attention_pattern`: ``R.nn.attention`` / ``R.nn.attention_bias`` (BSNH layout).

Nothing is registered on import: the detection pass builds what it uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._compat import Op, Type, constant_value, dpl, relax, set_type, structural_equal, tirx


class Unsupported(Exception):
    """A candidate that must stay dense; the message is the report's reason."""


def softmax_attention_pattern():
    """Return (pattern, named sub-patterns) for matmul(softmax(scores) [astype] [reshape], values)."""
    scores, values = dpl.wildcard(), dpl.wildcard()
    softmax = dpl.is_op("relax.nn.softmax")(scores)
    probs = softmax | dpl.is_op("relax.astype")(softmax)
    probs = probs | dpl.is_op("relax.reshape")(probs, dpl.wildcard())
    out = dpl.is_op("relax.matmul")(probs, values)
    return out, {"scores": scores, "softmax": softmax, "values": values}


def fused_attention_pattern():
    """Return (pattern, named sub-patterns) for R.nn.attention with and without bias."""
    q, k, v, bias = dpl.wildcard(), dpl.wildcard(), dpl.wildcard(), dpl.wildcard()
    plain = dpl.is_op("relax.nn.attention")(q, k, v)
    biased = dpl.is_op("relax.nn.attention_bias")(q, k, v, bias)
    return plain | biased, {"query": q, "key": k, "value": v, "bias": bias}


# ---------------------------------------------------------------- expression helpers
def op_name(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, Op):
        return str(expr.op.name)
    return None


def value_of(expr, var2val):
    """The bound value of a dataflow/local var, else the expression itself."""
    while isinstance(expr, relax.Var) and expr in var2val:
        expr = var2val[expr]
    return expr


def typed(expr):
    """A new (unbound) call with its type inferred, so its shape can be checked before emitting.

    A call on other unbound calls (each typed already) is typed through stand-in vars of their
    types: a BlockBuilder cannot normalise nested calls outside a binding scope.
    """
    if type(expr.ty) is not Type:  # a var, a constant, or a call typed before (ir.Type: missing)
        return expr
    if isinstance(expr, relax.Call) and any(isinstance(a, relax.Call) for a in expr.args):
        args = [relax.Var("arg", a.ty) if isinstance(a, relax.Call) else a for a in expr.args]
        ty = relax.BlockBuilder().normalize(relax.Call(expr.op, args, expr.attrs, expr.ty_args)).ty
        set_type(expr, ty)
        return expr
    return relax.BlockBuilder().normalize(expr)


def shape_of(expr) -> list | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    return list(ty.shape.values)


def dtype_of(expr) -> str:
    return str(expr.ty.dtype)


def static_int(dim) -> int | None:
    return int(dim.value) if isinstance(dim, tirx.IntImm) else (dim if isinstance(dim, int) else None)


def same_dim(a, b) -> bool:
    sa, sb = static_int(a), static_int(b)
    if sa is not None or sb is not None:
        return sa == sb
    return bool(structural_equal(a, b))


def scalar_constant(expr, var2val) -> float | None:
    """The value of a scalar (or one-element) float constant, else None."""
    data = constant_value(value_of(expr, var2val))
    if data is not None:
        if data.size == 1 and np.issubdtype(data.dtype, np.floating):
            return float(data.reshape(()))
    return None


def _check_softmax_axis(softmax_call) -> None:
    axis = int(softmax_call.attrs.axis)
    rank = len(shape_of(softmax_call) or [])
    if axis not in (-1, rank - 1):
        raise Unsupported(f"softmax over axis {axis}, not the key axis (-1)")


# ---------------------------------------------------------------- the scores chain
@dataclass
class ScoreChain:
    """What `peel_scores` found between softmax and Q·Kᵀ."""

    q: object  # Q operand of the Q·Kᵀ matmul
    kt: object  # Kᵀ operand
    scale: float = 1.0
    mask: object = None  # additive mask expression (new or existing), before `mask_scale`
    mask_scale: float = 1.0  # scales applied after the mask was added
    mask_const: np.ndarray | None = None  # the mask's value when it is a compile-time constant
    notes: list = field(default_factory=list)


def _peel_where(call, var2val, chain_is_first: bool):
    """where(c, S, fill) keeps S where c; where(c, fill, S) masks S where c."""
    cond, a, b = call.args
    fill = scalar_constant(b if chain_is_first else a, var2val)
    from ..block import MASKED_BELOW

    if fill is None or fill > MASKED_BELOW:
        raise Unsupported("where(...) on the scores with a fill that is not a large negative constant")
    dtype = dtype_of(call)
    keep_value, drop_value = relax.const(0.0, dtype), relax.const(fill, dtype)
    if not chain_is_first:
        keep_value, drop_value = drop_value, keep_value
    cond_val = constant_value(value_of(cond, var2val))
    if cond_val is not None:
        c = cond_val.astype(bool)
        const = np.where(c, 0.0, fill) if chain_is_first else np.where(c, fill, 0.0)
        return relax.const(const.astype(dtype), dtype), const
    return typed(relax.op.where(cond, keep_value, drop_value)), None


def peel_scores(expr, var2val) -> ScoreChain:
    """Walk from the softmax input back to matmul(Q, Kᵀ), collecting scale and mask."""
    scale_after_mask = 1.0
    scale_total = 1.0
    mask = mask_const = None
    while True:
        call = value_of(expr, var2val)
        name = op_name(call)
        if name == "relax.astype":
            expr = call.args[0]
        elif name in ("relax.multiply", "relax.divide"):
            a, b = call.args
            c = scalar_constant(b, var2val)
            if c is None and name == "relax.multiply":
                c, a = scalar_constant(a, var2val), b
            if c is None or c == 0.0:
                raise Unsupported(f"{name} of the scores by a non-constant or zero value")
            c = c if name == "relax.multiply" else 1.0 / c
            scale_total *= c
            if mask is None:
                scale_after_mask *= c
            expr = a
        elif name == "relax.add":
            if mask is not None:
                raise Unsupported("more than one mask added to the scores")
            a, b = call.args
            if _reaches_qk(a, var2val) or (not _reaches_qk(b, var2val)
                                           and constant_value(value_of(b, var2val)) is not None):
                chain, mask = a, b  # the scores side; with neither reaching Q·Kᵀ, the non-constant one
            else:
                chain, mask = b, a
            if not str(dtype_of(mask)).startswith("float"):
                raise Unsupported(f"mask of dtype {dtype_of(mask)} added to the scores")
            mask_const = constant_value(value_of(mask, var2val))
            expr = chain
        elif name == "relax.where":
            if mask is not None:
                raise Unsupported("more than one mask applied to the scores")
            first = _reaches_qk(call.args[1], var2val) or (not _reaches_qk(call.args[2], var2val)
                                                            and scalar_constant(call.args[2], var2val) is not None)
            mask, mask_const = _peel_where(call, var2val, first)
            expr = call.args[1] if first else call.args[2]
        elif name == "relax.matmul":
            q, kt = call.args
            chain = ScoreChain(q=q, kt=kt, scale=scale_total, mask=mask, mask_const=mask_const)
            chain.mask_scale = scale_after_mask if mask is not None else 1.0
            return chain
        else:
            raise Unsupported(f"unsupported op {name or type(call).__name__} between Q·Kᵀ and softmax")


def _reaches_qk(expr, var2val, depth: int = 8) -> bool:
    """Does this operand lead (through elementwise scale/mask/astype ops) to a matmul?"""
    for _ in range(depth):
        call = value_of(expr, var2val)
        name = op_name(call)
        if name == "relax.matmul":
            return True
        if name not in ("relax.astype", "relax.multiply", "relax.divide", "relax.add", "relax.where"):
            return False
        if name == "relax.where":
            return _reaches_qk(call.args[1], var2val, depth - 1) or _reaches_qk(call.args[2], var2val, depth - 1)
        args = [a for a in call.args if constant_value(value_of(a, var2val)) is None]
        if name == "relax.add" and len(args) == 2:
            return _reaches_qk(args[0], var2val, depth - 1) or _reaches_qk(args[1], var2val, depth - 1)
        if not args:
            return False
        expr = args[0]
    return False


def peel_scalar_scale(expr, var2val):
    """x * c or x / c with a scalar constant c (a scale folded into Q or K) -> (x, c)."""
    call = value_of(expr, var2val)
    name = op_name(call)
    if name in ("relax.multiply", "relax.divide"):
        a, b = call.args
        c = scalar_constant(b, var2val)
        if c is None and name == "relax.multiply":
            c, a = scalar_constant(a, var2val), b
        if c is not None and c != 0.0:
            return a, (c if name == "relax.multiply" else 1.0 / c)
    return expr, 1.0


# ---------------------------------------------------------------- K/V head sources (GQA)
def peel_kv_repeat(expr, heads: int, var2val):
    """Undo a K/V head repeat. Returns (source, kv_heads, KVMap) or (expr, heads, INTERLEAVE).

    Recognised: repeat(x, g, axis=1); reshape(broadcast_to(expand_dims(x, 2) | reshape(x, 5-D)),
    [B, H, S, D]); broadcast_to(x, [B, H, S, D]) with x's head dim 1 (MQA); tile(x, [1, g, 1, 1]).
    """
    from ..block import KVMap

    call = value_of(expr, var2val)
    name = op_name(call)
    if name == "relax.repeat" and int(call.attrs.axis) in (1, -3):
        src = call.args[0]
        return src, static_int(shape_of(src)[1]), KVMap.INTERLEAVE
    if name == "relax.tile":
        reps = [int(r) for r in call.attrs.repeats]
        if len(reps) == 4 and reps[0] == reps[2] == reps[3] == 1:
            src = call.args[0]
            return src, static_int(shape_of(src)[1]), KVMap.TILE
    if name == "relax.broadcast_to":
        src = call.args[0]
        sshape = shape_of(src)
        if sshape is not None and len(sshape) == 4 and static_int(sshape[1]) == 1:
            return src, 1, KVMap.INTERLEAVE
    if name == "relax.reshape":
        inner = value_of(call.args[0], var2val)
        if op_name(inner) == "relax.broadcast_to":
            five = value_of(inner.args[0], var2val)
            fshape = shape_of(inner.args[0])
            if fshape is not None and len(fshape) == 5 and static_int(fshape[2]) == 1:
                if op_name(five) in ("relax.expand_dims", "relax.reshape"):
                    src = five.args[0]
                    sshape = shape_of(src)
                    if sshape is not None and len(sshape) == 4 and same_dim(sshape[1], fshape[1]):
                        return src, static_int(sshape[1]), KVMap.INTERLEAVE
    return expr, heads, KVMap.INTERLEAVE


def untranspose_key(kt, var2val):
    """Kᵀ [B,H,D,S] -> an expression for K [B,H,S,D], reusing an existing permute when possible."""
    call = value_of(kt, var2val)
    if op_name(call) == "relax.permute_dims" and call.attrs.axes is not None:
        axes = [int(a) for a in call.attrs.axes]
        if len(axes) == 4:
            axes[2], axes[3] = axes[3], axes[2]
            if axes == [0, 1, 2, 3]:
                return call.args[0]
            return typed(relax.op.permute_dims(call.args[0], axes))
    return typed(relax.op.permute_dims(kt, [0, 1, 3, 2]))


def classify_constant_mask(mask: np.ndarray, q_len, kv_len):
    """The `CausalMode` a constant additive mask [.., Sq, Skv] implements exactly, else None.

    Exactly means: every visible entry is 0 and every hidden one is <= MASKED_BELOW, the same in
    every batch and head slice. Anything else (padding, ALiBi, windows) stays a general mask.
    """
    from ..block import MASKED_BELOW, CausalMode

    sq, skv = static_int(q_len), static_int(kv_len)
    if sq is None or skv is None or mask.ndim < 2 or mask.shape[-1] != skv or mask.shape[-2] not in (1, sq):
        return None
    mask = np.broadcast_to(mask, mask.shape[:-2] + (sq, skv)).reshape(-1, sq, skv)
    if not (mask == mask[:1]).all():
        return None
    m = mask[0]
    i, j = np.arange(sq)[:, None], np.arange(skv)[None, :]
    for mode, vis in ((CausalMode.BOTTOM_RIGHT, j <= i + (skv - sq)), (CausalMode.TOP_LEFT, j <= i),
                      (CausalMode.NONE, np.ones_like(m, bool))):
        if not vis.any(axis=1).all():
            continue  # a row seeing no key gets the mask's fill in dense attention: keep the mask itself
        if (m[vis] == 0).all() and (m[~vis] <= MASKED_BELOW).all():
            return mode
    return None
