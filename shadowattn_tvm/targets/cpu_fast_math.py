"""exp and sigmoid for float32 CPU kernels as plain arithmetic, so that they vectorise.

LLVM turns a vector ``exp`` into one libm ``expf`` call per lane (~10 ns each here), which made
the dense softmax and SwiGLU's SiLU slower than the matmuls around them. `use_fast_exp` rewrites
the blocks of a schedule to `ops._isa.exp_core` (the shadowAttn kernels' exp: a polynomial on
[-ln2/2, ln2/2] times 2^n built from the exponent bits): within 2 ulp of numpy's exp over the
float32 range, 0 below -87.34 (numpy gives a subnormal there) and inf above 88.38. Used by
`targets.cpu_generic.schedule_default` on the model's own kernels only (the shadowAttn kernels
call `exp_neg` themselves).
"""
from __future__ import annotations

from .._compat import s_tir, tirx, tvm
from ..ops._isa import EXP_MAX, EXP_MIN, exp_core

_BINARY = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.Mod, tirx.FloorDiv, tirx.FloorMod, tirx.Min, tirx.Max,
           tirx.EQ, tirx.NE, tirx.LT, tirx.LE, tirx.GT, tirx.GE, tirx.And, tirx.Or, tirx.LShift, tirx.RShift,
           tirx.BitwiseAnd, tirx.BitwiseOr, tirx.BitwiseXor)
_LEAVES = (tvm.ir.Var, tirx.IntImm, tirx.FloatImm, tvm.ir.TensorLoad)
FREE_CALLS = frozenset({"prim.if_then_else", "tirx.reinterpret", "prim.likely"})  # as cheap as arithmetic


def fast_exp(value):
    """exp(value) for a float32 expression, vectorisable."""
    f32 = "float32"
    x, c = tirx.Var("exp_x", f32), tirx.Var("exp_c", f32)
    out = tirx.Select(x < tirx.const(EXP_MIN, f32), tirx.const(0.0, f32),
                      tirx.Select(x > tirx.const(EXP_MAX, f32), tirx.const(float("inf"), f32), exp_core(c)))
    clamped = tirx.max(tirx.min(x, tirx.const(EXP_MAX, f32)), tirx.const(EXP_MIN, f32))
    return tirx.Let(x, value, tirx.Let(c, clamped, out))


def _fast(call):
    """The fast form of an exp or sigmoid call (args already rewritten), else None."""
    if not isinstance(call, tvm.ir.Call) or str(call.ty.dtype) != "float32" or len(call.args) != 1:
        return None
    name = call.op.name
    if name == "tirx.exp":
        return fast_exp(call.args[0])
    if name == "tirx.sigmoid":
        one = tirx.const(1.0, "float32")
        return one / (one + fast_exp(tirx.const(0.0, "float32") - call.args[0]))
    return None


def rewrite(expr):
    """`expr` with every float32 exp/sigmoid replaced; the same object when there is none. Node
    kinds not listed here are left untouched (correct, only not faster)."""
    if isinstance(expr, _BINARY):
        a, b = rewrite(expr.a), rewrite(expr.b)
        return expr if a.same_as(expr.a) and b.same_as(expr.b) else type(expr)(a, b)
    if isinstance(expr, tirx.Not):
        a = rewrite(expr.a)
        return expr if a.same_as(expr.a) else tirx.Not(a)
    if isinstance(expr, tirx.Select):
        parts = [rewrite(p) for p in (expr.condition, expr.true_value, expr.false_value)]
        same = all(p.same_as(q) for p, q in zip(parts, (expr.condition, expr.true_value, expr.false_value)))
        return expr if same else tirx.Select(*parts)
    if isinstance(expr, tirx.Cast):
        v = rewrite(expr.value)
        return expr if v.same_as(expr.value) else tirx.Cast(expr.ty.dtype, v)
    if isinstance(expr, tirx.Let):
        value, body = rewrite(expr.value), rewrite(expr.body)
        return expr if value.same_as(expr.value) and body.same_as(expr.body) else tirx.Let(expr.var, value, body)
    if isinstance(expr, tvm.ir.Call) and isinstance(expr.op, tvm.ir.Op):
        args = [rewrite(a) for a in expr.args]
        same = all(a.same_as(b) for a, b in zip(args, expr.args))
        call = expr if same else tirx.call_intrin(expr.ty.dtype, expr.op.name, *args)
        fast = _fast(call)
        return call if fast is None else fast
    return expr


def nodes(expr):
    """Every node of `expr`, depth first, through the node kinds `rewrite` knows (others as leaves)."""
    yield expr
    if isinstance(expr, (*_BINARY, tirx.Not)):
        children = (expr.a, expr.b) if isinstance(expr, _BINARY) else (expr.a,)
    elif isinstance(expr, tirx.Select):
        children = (expr.condition, expr.true_value, expr.false_value)
    elif isinstance(expr, tirx.Cast):
        children = (expr.value,)
    elif isinstance(expr, tirx.Let):
        children = (expr.value, expr.body)
    elif isinstance(expr, tvm.ir.Call) and isinstance(expr.op, tvm.ir.Op):
        children = tuple(expr.args)
    else:
        children = ()
    for child in children:
        yield from nodes(child)


def calls(expr) -> set[str]:
    """Names of the intrinsics `expr` calls; "?" for a node kind this module does not know."""
    names = set()
    for node in nodes(expr):
        if isinstance(node, tvm.ir.Call) and isinstance(node.op, tvm.ir.Op):
            names.add(node.op.name)
        elif not isinstance(node, (*_BINARY, tirx.Not, tirx.Select, tirx.Cast, tirx.Let, *_LEAVES)):
            names.add("?")
    return names


def use_fast_exp(sch) -> None:
    """Rewrite exp/sigmoid in the value of every top-level block of `sch` that stores one value."""
    root = sch.get_sblock("root")
    for block_rv in sch.get_child_blocks(root):
        block = sch.get(block_rv)
        store = block.body
        if not isinstance(store, tirx.BufferStore):
            continue
        value = rewrite(store.value)
        if value.same_as(store.value):
            continue
        new = s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint,
                           tirx.BufferStore(store.buffer, value, store.indices), block.init, block.alloc_buffers,
                           block.match_buffers, block.annotations)
        sch.state.replace(sch.get_sref(block_rv), new, {block: new})


__all__ = ["FREE_CALLS", "calls", "fast_exp", "nodes", "rewrite", "use_fast_exp"]
