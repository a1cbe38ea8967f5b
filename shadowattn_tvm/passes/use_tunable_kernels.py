"""UseTunableKernels: swap hand-written sparse-attention kernels for their tunable TE form.

Runs between phase 2 (SplitSparseAttention) and phase 5 (lowering), and only when MetaSchedule
is involved: task extraction swaps every call (`swap_to_tunable`), a compile with a tuning
database swaps only the calls whose tuned TE kernel beats the hand-written one, and leaves the
kernels it kept hand-written in the module's ``ir_attrs.TUNING`` for `ApplyTuningDatabase`.
The hand-written kernel is already scheduled TIR with symbolic shapes, so MetaSchedule has
nothing to tune there; the TE definition (`ops.sparse_attention._sparse_attention_te`) at the
call's static shapes is what a tuning record can match.

Precondition: static shapes at the call sites. Each sparse call is tied to its attention block
through the data flow pilot -> top-k -> sparse (the pilot function carries the block's attrs).
"""
from __future__ import annotations

from typing import Callable

from .._compat import PyExprMutator, mutator, relax, tirx, tvm
from ..block import AttentionBlock
from ..ir_attrs import TuningChoices, with_tuning
from ..ops.sparse_attention import _sparse_attention_te
from .split_sparse_attention import PILOT_KIND

SPARSE_KERNEL = "sat_sparse_attention"


TUNABLE_NAME = "sat_sparse_attention (tunable form)"  # the name its tuning choices go by


@tvm.transform.module_pass(opt_level=0, name="UseTunableKernels")
class UseTunableKernels:
    """Replace hand-written sparse-attention calls by the TE form where `database`'s record wins.

    database: a `TuningDatabase`, or None to swap every call (what task extraction needs).
    """

    def __init__(self, database: "TuningDatabase | None" = None):
        self.database = database

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if self.database is None:
            return swap_to_tunable(mod)[0]
        kept = []

        def wins(te_func) -> bool:
            choice = self.database.choice(TUNABLE_NAME, te_func)
            if choice is None or not choice.use_tuned:
                kept.append(choice)
            return choice is not None and choice.use_tuned

        mod = swap_to_tunable(mod, wins)[0]
        return with_tuning(mod, TuningChoices(tuple(c for c in kept if c is not None), len(kept)))


def swap_to_tunable(mod: tvm.IRModule, select: Callable[["tirx.PrimFunc"], bool] | None = None) -> tuple:
    """(`mod` with the sparse calls swapped where `select(te_func)` (None: all), the
    (hand-written PrimFunc, TE PrimFunc) pair of every swapped call)."""
    if not any(gv.name_hint.startswith(SPARSE_KERNEL) for gv in mod.get_global_vars()):
        return mod, []
    swapper = _Swapper(mod, select)
    mod = swapper.transform()
    return relax.transform.DeadCodeElimination()(mod), swapper.swapped


def _kind(func) -> str | None:
    attrs = getattr(func, "attrs", None)
    return str(attrs["shadowattn.kind"]) if attrs is not None and "shadowattn.kind" in attrs else None


def _static_shape(expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    values = [getattr(d, "value", None) for d in getattr(shape, "values", [])]
    return values if values and all(isinstance(v, int) for v in values) else None


def te_sparse_kernel(block: AttentionBlock, args) -> "tirx.PrimFunc | None":
    """The TE sparse-attention PrimFunc for call arguments (q, k, v, idx[, mask]); None if not static."""
    shapes = [_static_shape(a) for a in args]
    if any(s is None for s in shapes):
        return None
    q, k, v, idx = shapes[:4]
    mask = shapes[4] if len(shapes) > 4 else None
    func = _sparse_attention_te(block, tuple(q), k[2], v[3], idx[3], mask)
    return func.without_attr("global_symbol")


@mutator
class _Swapper(PyExprMutator):
    def __init__(self, mod, select):
        super().__init__(mod)
        self.mod, self.select = mod, select
        self.swapped: list = []
        self.block_of: dict = {}  # relax.Var -> AttentionBlock, along pilot -> top-k -> sparse

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod.functions.items():
            if isinstance(func, relax.Function) and _kind(func) is None:
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def _block(self, value) -> AttentionBlock | None:
        if isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar):
            callee = self.mod[value.op]
            if _kind(callee) == PILOT_KIND:
                return AttentionBlock.from_attrs(callee.attrs)
        if isinstance(value, relax.TupleGetItem):
            return self.block_of.get(value.tuple_value)
        if isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir"):
            for arg in value.args[1].fields:
                if arg in self.block_of:
                    return self.block_of[arg]
        return None

    def visit_var_binding_(self, binding):
        block = self._block(binding.value)  # on the original vars, before they are remapped
        if block is not None:
            self.block_of[binding.var] = block
        super().visit_var_binding_(binding)

    def visit_call_(self, call):
        is_sparse = call.op == tvm.ir.Op.get("relax.call_tir") and call.args[0].name_hint.startswith(SPARSE_KERNEL)
        block = self.block_of.get(call.args[1].fields[3]) if is_sparse else None
        call = super().visit_call_(call)
        if block is None:
            return call
        args = list(call.args[1].fields)
        te_func = te_sparse_kernel(block, args)
        if te_func is None or (self.select is not None and not self.select(te_func)):
            return call
        self.swapped.append((self.mod[call.args[0]], te_func))
        gv = self.builder_.add_func(te_func, f"{SPARSE_KERNEL}_te")
        return relax.call_tir(gv, args, call.ty)


__all__ = ["UseTunableKernels", "SPARSE_KERNEL", "TUNABLE_NAME", "swap_to_tunable", "te_sparse_kernel"]
