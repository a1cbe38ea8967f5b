"""Evaluate a parameter-free mask expression at sample lengths, to recognise causal masks.

Exporters build causal masks from shapes (``triu(full(...))``, ``where(less(arange, ...))``,
...) in endless variations. Rather than pattern-match each, detection extracts the mask's
binding closure, binds the symbolic lengths to small sample values, runs it on the host, and
compares with the causal templates (`patterns.classify_constant_mask`). A mask that depends on a
function parameter (a padding mask input) is never evaluated: it stays an additive mask.
"""
from __future__ import annotations

import numpy as np

from .._compat import Analyzer, relax, tirx, tvm

_SAMPLES = ((5, 9), (7, 7), (3, 11))  # distinct small values for up to two length vars


class _NotClosed(Exception):
    pass


def _closure(expr, var2val):
    order, seen = [], set()

    def visit(e):
        for fv in relax.analysis.free_vars(e):
            if fv in seen:
                continue
            seen.add(fv)
            if fv not in var2val:
                if isinstance(fv.ty, (relax.TensorType, relax.TupleType, relax.ObjectType)):
                    raise _NotClosed(fv)  # a function parameter: data-dependent mask
                continue  # a symbolic length, bound below
            visit(var2val[fv])
            order.append(fv)

    visit(expr)
    return order


def evaluate_closed_mask(mask, var2val, q_len, kv_len, mod=None):
    """Yield (mask value, Sq, Skv) at sample lengths, or nothing if the mask is not closed.

    `mod` supplies the PrimFuncs a mask made with call_tir refers to.
    """
    try:
        order = _closure(mask, var2val)
    except _NotClosed:
        return
    sym = [v for v in _symbolic_vars(q_len, kv_len)]
    if len(sym) > 2:
        return
    out = relax.Var("out", mask.ty)
    bindings = [relax.VarBinding(v, var2val[v]) for v in order] + [relax.VarBinding(out, mask)]
    dims = relax.Var("dims", relax.ShapeType(values=sym))  # defines the lengths BindSymbolicVars binds
    func = relax.Function([dims], relax.SeqExpr([relax.DataflowBlock(bindings)], out), mask.ty)
    for sample in _SAMPLES if sym else _SAMPLES[:1]:
        values = dict(zip(sym, sample))
        try:
            funcs = {gv: f for gv, f in (mod.functions.items() if mod is not None else [])
                     if isinstance(f, tirx.PrimFunc)}
            eval_mod = tvm.IRModule({**funcs, tvm.ir.GlobalVar("main"): func.with_attr("global_symbol", "main")})
            if values:
                eval_mod = relax.transform.BindSymbolicVars(values, "main")(eval_mod)
            ex = tvm.compile(eval_mod, target="llvm")
            result = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.ShapeTuple(sample[: len(sym)])).numpy()
        except Exception:  # noqa: BLE001 - any failure just means "not recognised"
            return
        analyzer = Analyzer()
        for v, n in values.items():
            analyzer.bind(v, n)
        yield np.asarray(result), int(analyzer.simplify(q_len)), int(analyzer.simplify(kv_len))


def _symbolic_vars(*dims):
    found = []
    for dim in dims:
        if isinstance(dim, int) or isinstance(dim, tirx.IntImm):
            continue
        for v in tirx.analysis.undefined_vars(dim):
            if not any(v.same_as(f) for f in found):
                found.append(v)
    return found
