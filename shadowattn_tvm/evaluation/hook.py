"""AttentionHook: route every attention composite to a Python callback (accuracy experiments).

The compiled model then calls ``shadowattn.attention_hook(q, k, v[, mask], layer)`` per block,
with canonical BHSD tensors at the KV head count and the block's additive mask when it has one
(sliding windows, padding), and the active `AttentionVariant` computes the block in numpy: dense (optionally with heads zeroed, for calibration), INT8 attention as an NPU
graph runs it, or block-sparse estimation. One compiled model serves every experiment; the
shadowAttn rows of the accuracy table use the real compiled kernels, not this hook.
"""
from __future__ import annotations

import numpy as np

from .._compat import relax, tvm
from ..report import AttentionReport
from ..block import AttentionBlock
from ..ir_attrs import attention_report
from ..passes.detect_attention import COMPOSITE_KIND

HOOK_NAME = "shadowattn.attention_hook"


@tvm.transform.module_pass(opt_level=0, name="AttentionHook")
class AttentionHook:
    """Replace calls of attention composites by a packed call to `HOOK_NAME`.

    `blocks` maps layer index -> `AttentionBlock` of the last module transformed, `report` its
    detection report (why candidates stayed dense).
    """

    def __init__(self):
        self.blocks = {}
        self.report = AttentionReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report = attention_report(mod)
        composites = {gv: mod[gv] for gv, f in mod.functions.items()
                      if f.attrs is not None and "shadowattn.kind" in f.attrs
                      and str(f.attrs["shadowattn.kind"]) == COMPOSITE_KIND}
        self.blocks = {b.layer: b for b in (AttentionBlock.from_attrs(f.attrs) for f in composites.values())}
        if not composites:
            return mod

        @relax.expr_functor.mutator
        class _Mutator(relax.PyExprMutator):
            def visit_call_(self, call):
                call = super().visit_call_(call)
                if not (isinstance(call.op, relax.GlobalVar) and call.op in composites):
                    return call
                block = AttentionBlock.from_attrs(composites[call.op].attrs)
                tensors = call.args[:4] if block.has_mask else call.args[:3]
                return relax.op.call_pure_packed(HOOK_NAME, *tensors, relax.prim_value(block.layer), ty_args=call.ty)

        mutator = _Mutator(mod)
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function) and gv not in composites:
                mutator.builder_.update_func(gv, mutator.visit_expr(func))
        return relax.transform.DeadCodeElimination()(mutator.builder_.get())


_ACTIVE: list = []  # the variant of the innermost HookContext


def _trampoline(q, k, v, *rest):
    # The VM resolves packed functions once, at initialisation: this stable function dispatches
    # to whatever variant is active at call time. rest: (mask, layer) or (layer,)
    if not _ACTIVE:
        raise RuntimeError("the attention hook was called outside a HookContext")
    mask = rest[0].numpy() if len(rest) == 2 else None
    dtype = q.dtype
    out = _ACTIVE[-1](int(rest[-1]), q.numpy(), k.numpy(), v.numpy(), mask)
    return tvm.runtime.tensor(np.ascontiguousarray(out.astype(dtype)))


tvm.register_global_func(HOOK_NAME, _trampoline, override=True)


class HookContext:
    """`with HookContext(variant):` makes compiled hook calls run `variant(layer, q, k, v)`."""

    def __init__(self, variant):
        self.variant = variant

    def __enter__(self):
        _ACTIVE.append(self.variant)
        return self.variant

    def __exit__(self, *exc):
        _ACTIVE.pop()


def hook_pipeline(hook: AttentionHook):
    """Canonicalize, detect, route attention to the hook, then the usual lowering."""
    from ..passes import DetectAttention, lowering

    return tvm.transform.Sequential([relax.transform.Normalize(), relax.transform.FoldConstant(),
                                     DetectAttention(), hook, lowering()])
