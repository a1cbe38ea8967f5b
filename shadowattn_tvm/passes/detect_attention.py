"""DetectAttention: find attention blocks and outline each as a typed composite function.

Phase 1 of the shadowAttn pipeline. Precondition: a Relax IRModule (any importer); running
FoldConstant first lets constant masks and scales be recognised. Each block the analyser
understands becomes ``R.call(sat_attention_L<i>, q, k, v[, mask])`` on canonical BHSD tensors:
Q [B,H,Sq,D], K/V at their *own* KV head count (GQA repeats are peeled off and never
materialised), an additive mask only when it is not a plain causal one. The composite carries
the block's `AttentionBlock` as attributes and a dense body, so the module stays runnable
whether or not `SplitSparseAttention` runs next. Everything else is left as it was and listed
in the `AttentionReport` with the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .._compat import PyExprMutator, constant_value, mutator, relax, te, tirx, tvm
from ..block import AttentionBlock, CausalMode, KVMap
from . import patterns as P
from .mask_eval import evaluate_closed_mask
from ..ir_attrs import attention_report, with_report
from ..report import Candidate, internal_error

COMPOSITE_KIND = "attention"


@dataclass
class _Plan:
    block: AttentionBlock
    q: object
    k: object
    v: object
    mask: object  # canonical 4-D additive mask expression, or None
    out_layout: str  # how the composite's [B,H,S,Dv] output goes back: "bhsd", "bsnh" (R.nn.attention)
    # or "nsd" (3-D batched [B·H, S, D] attention, run as batch 1 with B·H heads)
    out_dtype: str
    function: str = ""  # the Relax function the block is in


@tvm.transform.module_pass(opt_level=0, name="DetectAttention")
class DetectAttention:
    """Outline every understood attention block; report every candidate (``ir_attrs.REPORT``)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        plans = {}
        report = attention_report(mod)
        for gv in sorted(mod.functions, key=lambda g: g.name_hint):
            func = mod[gv]
            if not isinstance(func, relax.Function) or func.attrs and "shadowattn.kind" in func.attrs:
                continue
            layer = 0  # per function: layer i of a profile is the i-th block of each entry (prefill chunks)
            for var, plan_or_reason, form, root in _Analyzer(func, mod).candidates():
                cand = Candidate(function=gv.name_hint, form=form, status="dense")
                if isinstance(plan_or_reason, str):
                    cand.reason = plan_or_reason
                    _describe_root(cand, root)
                else:
                    plan = plan_or_reason
                    plan.block = _with_layer(plan.block, layer)
                    plan.function = gv.name_hint
                    layer += 1
                    cand.status = "rewritten"
                    _describe(cand, plan)
                    plans[var] = plan
                report.add(cand)
        if plans:
            qualify = len({p.function for p in plans.values()}) > 1  # names stay sat_attention_L<i> for one entry
            mod = relax.transform.DeadCodeElimination()(_Rewriter(mod, plans, qualify).transform())
        return with_report(mod, report) if report.candidates else mod  # no candidate: unchanged


def _with_layer(block: AttentionBlock, layer: int) -> AttentionBlock:
    from dataclasses import replace

    return replace(block, layer=layer)


def _describe_root(cand: Candidate, root) -> None:
    shape = P.shape_of(root)
    if shape and len(shape) == 4:
        cand.dtype = P.dtype_of(root)


def _describe(cand: Candidate, plan: _Plan) -> None:
    b = plan.block
    qs, ks = P.shape_of(plan.q), P.shape_of(plan.k)
    cand.layer, cand.num_heads, cand.num_kv_heads, cand.head_dim = b.layer, b.num_heads, b.num_kv_heads, b.head_dim
    cand.causal, cand.dtype = b.causal.value, b.dtype
    cand.mask = "additive" if b.has_mask else ("causal" if b.causal != CausalMode.NONE else "none")
    cand.q_len, cand.kv_len = (str(P.static_int(x) if P.static_int(x) is not None else x) for x in (qs[2], ks[2]))


class _Analyzer:
    """Makes a `_Plan` (or a reason to stay dense) for each candidate binding of one function."""

    def __init__(self, func: relax.Function, mod: tvm.IRModule):
        self.func, self.mod = func, mod
        self._mask_cache = {}  # one evaluation per mask expression shared by many layers
        self.var2val = relax.analysis.get_var2val(func)
        self.softmax_pat, _ = P.softmax_attention_pattern()
        self.fused_pat, _ = P.fused_attention_pattern()

    def candidates(self):
        for var, value in self.var2val.items():
            if not isinstance(value, relax.Call):
                continue
            if self.softmax_pat.match(value, self.var2val):
                form, analyse = "softmax", self._softmax_block
            elif self.fused_pat.match(value, self.var2val):
                form, analyse = "nn.attention", self._fused_block
            else:
                continue
            try:
                plan = analyse(value)
                _verify(plan, var)
            except P.Unsupported as err:
                yield var, str(err), form, value
            except Exception as err:  # noqa: BLE001 - one candidate's failure must not fail the module
                yield var, internal_error("analysing", err), form, value
            else:
                yield var, plan, form, value

    # ------------------------------------------------------------ explicit softmax form
    def _softmax_block(self, root) -> _Plan:
        v2v = self.var2val
        probs = P.value_of(root.args[0], v2v)
        if P.op_name(probs) == "relax.reshape":
            raise P.Unsupported("the softmax weights are reshaped before the P·V matmul (as BLOOM's 4-D softmax "
                                "between 3-D batched matmuls)")
        softmax = P.value_of(probs.args[0], v2v) if P.op_name(probs) == "relax.astype" else probs
        P._check_softmax_axis(softmax)
        chain = P.peel_scores(softmax.args[0], v2v)
        q, q_scale = P.peel_scalar_scale(chain.q, v2v)
        kt, kt_scale = P.peel_scalar_scale(chain.kt, v2v)  # a scale on Kᵀ must not hide the GQA repeat
        v, layout = root.args[1], "bhsd"
        ranks = tuple(len(P.shape_of(x) or ()) for x in (q, kt, v))
        if ranks == (3, 3, 3):  # [B·H, S, D] batched matmuls: batch 1 with B·H heads
            q, kt, v = (P.typed(relax.op.expand_dims(x, [0])) for x in (q, kt, v))
            layout = "nsd"
        elif ranks != (4, 4, 4):
            raise P.Unsupported(f"Q, Kᵀ and V of ranks {ranks} (4-D [B,H,S,D] or 3-D [B·H,S,D] attention "
                                "is rewritten; matmul-broadcast ranks stay dense)")
        k, k_scale = P.peel_scalar_scale(P.untranspose_key(kt, v2v), v2v)
        k_scale *= kt_scale
        return self._plan(q, k, v, chain.scale * q_scale * k_scale, chain, causal=CausalMode.NONE,
                          out_layout=layout, out_dtype=P.dtype_of(root))

    # ------------------------------------------------------------ R.nn.attention
    def _fused_block(self, root) -> _Plan:
        attrs = root.attrs
        if attrs.window_size is not None:
            raise P.Unsupported(f"sliding-window attention (window {attrs.window_size})")
        q, k, v = (P.typed(relax.op.permute_dims(x, [0, 2, 1, 3])) for x in root.args[:3])
        q_shape = P.shape_of(root.args[0])
        if q_shape is None or len(q_shape) != 4 or P.static_int(q_shape[3]) is None:
            raise P.Unsupported("R.nn.attention with a query that is not a static-head-dim 4-D tensor")
        scale = float(attrs.scale.value) if attrs.scale is not None else 1.0 / math.sqrt(P.static_int(q_shape[3]))
        causal = {None: CausalMode.NONE, "TopLeft": CausalMode.TOP_LEFT, "BottomRight": CausalMode.BOTTOM_RIGHT}
        mode = causal.get(None if attrs.causal_mask is None else str(attrs.causal_mask))
        if mode is None:
            raise P.Unsupported(f"causal_mask={attrs.causal_mask!r}")
        chain = P.ScoreChain(q=None, kt=None)
        if len(root.args) == 4:
            chain.mask = root.args[3]
            chain.mask_const = constant_value(P.value_of(chain.mask, self.var2val))
        return self._plan(q, k, v, scale, chain, causal=mode, out_layout="bsnh", out_dtype=P.dtype_of(root))

    # ------------------------------------------------------------ shared checks
    def _plan(self, q, k, v, scale, chain, causal, out_layout, out_dtype) -> _Plan:
        v2v = self.var2val
        q_shape = _shape(q, "Q")
        heads = P.static_int(q_shape[1])
        if heads is None:
            raise P.Unsupported("symbolic head count")
        k_src, kv_heads, kv_map = P.peel_kv_repeat(k, heads, v2v)
        v_src, v_heads, v_map = P.peel_kv_repeat(v, heads, v2v)
        if (kv_heads, kv_map) != (v_heads, v_map) or kv_heads is None:
            k_src, v_src, kv_heads, kv_map = k, v, heads, KVMap.INTERLEAVE
        k_shape, v_shape = _shape(k_src, "K"), _shape(v_src, "V")
        if kv_heads == heads and P.static_int(k_shape[1]) == P.static_int(v_shape[1]) == 1:
            kv_heads = 1  # one K/V head broadcast over the query heads by the matmuls (MQA)
        if P.static_int(k_shape[1]) != kv_heads or heads % kv_heads:
            raise P.Unsupported(f"{heads} query heads cannot share {_dim(k_shape[1])} KV heads")
        if P.static_int(v_shape[1]) != kv_heads:
            raise P.Unsupported(f"V has {_dim(v_shape[1])} heads where K has {kv_heads} (a broadcast of V alone)")
        if not (P.same_dim(q_shape[0], k_shape[0]) and P.same_dim(k_shape[0], v_shape[0])):
            raise P.Unsupported("Q, K and V batch sizes differ (broadcast batch)")
        if not (P.same_dim(k_shape[2], v_shape[2]) and P.same_dim(q_shape[3], k_shape[3])):
            raise P.Unsupported("K/V lengths or Q/K head dims differ")
        head_dim = P.static_int(q_shape[3])
        if head_dim is None or P.static_int(v_shape[3]) is None:
            raise P.Unsupported("symbolic head_dim")
        dtypes = {P.dtype_of(x) for x in (q, k_src, v_src)}
        if len(dtypes) != 1 or not dtypes <= {"float32", "float16"}:
            raise P.Unsupported(f"dtype {'/'.join(sorted(dtypes))} (float32 and float16 are supported)")
        dtype = dtypes.pop()
        if out_dtype != dtype:
            raise P.Unsupported(f"attention output dtype {out_dtype} differs from its inputs' {dtype}")
        if not (math.isfinite(scale) and scale > 0):
            # the pilot ranks keys by +Q·Kᵀ: with scale <= 0 the largest weights sit at the smallest scores
            raise P.Unsupported(f"softmax scale {scale:g} is not positive (top-k of Q·Kᵀ would keep the wrong keys)")
        mask = None
        if chain.mask is not None:
            causal, mask = self._mask(chain, q_shape, k_shape, dtype, causal)
        block = AttentionBlock(layer=-1, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                               causal=causal, scale=float(scale), dtype=dtype, kv_map=kv_map,
                               has_mask=mask is not None)
        return _Plan(block=block, q=q, k=k_src, v=v_src, mask=mask, out_layout=out_layout, out_dtype=out_dtype)

    def _mask(self, chain, q_shape, k_shape, dtype, causal):
        """Return (causal mode, canonical mask expression or None)."""
        mshape = _shape(chain.mask, "mask", ranks=(2, 3, 4))
        sq, skv = q_shape[2], k_shape[2]
        if not P.same_dim(mshape[-1], skv) or not (P.same_dim(mshape[-2], sq) or P.static_int(mshape[-2]) == 1):
            raise P.Unsupported(f"mask of shape {mshape} does not cover scores [.., {sq}, {skv}]")
        lead = [1] * (4 - len(mshape)) + [P.static_int(x) for x in mshape[:-2]]
        if lead[0] not in (1, P.static_int(q_shape[0])) or lead[1] not in (1, P.static_int(q_shape[1])):
            raise P.Unsupported(f"mask of shape {mshape} does not broadcast over batch and heads")
        if chain.mask_const is not None and causal == CausalMode.NONE and chain.mask_scale > 0:
            found = P.classify_constant_mask(chain.mask_const, sq, skv)
            if found is not None:
                return found, None
        elif chain.mask_const is None and causal == CausalMode.NONE and chain.mask_scale > 0:
            key = chain.mask if isinstance(chain.mask, relax.Var) else None
            if key is None or key not in self._mask_cache:
                found = {P.classify_constant_mask(value, n_q, n_kv)
                         for value, n_q, n_kv in evaluate_closed_mask(chain.mask, self.var2val, sq, skv, self.mod)}
                mode = found.pop() if len(found) == 1 else None
                if key is not None:
                    self._mask_cache[key] = mode
            else:
                mode = self._mask_cache[key]
            if mode is not None:
                return mode, None
        mask = chain.mask
        if len(mshape) < 4:
            mask = relax.op.reshape(mask, lead[: 4 - len(mshape)] + list(mshape))
        if not P.same_dim(mshape[-2], sq):
            mask = relax.op.broadcast_to(mask, lead + [sq, skv])
        if P.dtype_of(chain.mask) != dtype:
            mask = relax.op.astype(mask, dtype)
        if chain.mask_scale != 1.0:
            mask = relax.op.multiply(mask, relax.const(chain.mask_scale, dtype))
        return causal, mask


def _verify(plan: _Plan, var) -> None:
    """Type the composite call a plan would emit and check it yields the binding's type, before
    anything is rewritten: a plan that would not type-check stays dense instead of failing the build."""
    args = [relax.Var(f"arg{i}", P.typed(x).ty) for i, x in enumerate(_plan_args(plan))]
    bb = relax.BlockBuilder()
    composite = make_composite(plan.block, [a.ty for a in args], bb.add_func)
    out = bb.normalize(relax.Call(bb.add_func(composite, "check"), args))
    out = _restore_layout(plan, relax.Var("out", out.ty), bb.normalize)
    want, got = P.shape_of(var), P.shape_of(out)
    if want is None or got is None or len(want) != len(got) or not all(map(P.same_dim, want, got)) \
            or P.dtype_of(var) != P.dtype_of(out):
        raise P.Unsupported(f"the rewrite would yield {out.ty} where the block yields {var.ty}")


def _plan_args(plan: _Plan) -> tuple:
    return (plan.q, plan.k, plan.v) + ((plan.mask,) if plan.mask is not None else ())


def _restore_layout(plan: _Plan, out, emit):
    """The composite's [B,H,S,Dv] output in the layout of the block it replaces."""
    if plan.out_layout == "bsnh":
        return emit(relax.op.permute_dims(out, [0, 2, 1, 3]))
    if plan.out_layout == "nsd":
        return emit(relax.op.squeeze(out, [0]))
    return out


def _dim(dim) -> str:
    value = P.static_int(dim)
    return str(value if value is not None else dim)


def _shape(expr, what, ranks=(4,)):
    shape = P.shape_of(expr)
    if shape is None or len(shape) not in ranks:
        raise P.Unsupported(f"{what} is not a {'/'.join(map(str, ranks))}-D tensor of known rank")
    return shape


# ---------------------------------------------------------------- rewriting
@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, plans, qualify: bool):
        super().__init__(mod)
        self.mod, self.plans, self.qualify = mod, plans, qualify

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod.functions.items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def visit_var_binding_(self, binding):
        plan = self.plans.get(binding.var)
        if plan is None:
            return super().visit_var_binding_(binding)
        args = [self.builder_.emit(self.visit_expr(x)) if not isinstance(x, relax.Var) else self.visit_expr(x)
                for x in _plan_args(plan)]
        composite = make_composite(plan.block, [a.ty for a in args], self.builder_.add_func)
        where = f"{plan.function}_" if self.qualify else ""
        gv = self.builder_.add_func(composite, f"sat_attention_{where}L{plan.block.layer}")
        out = relax.Call(gv, args)
        if plan.out_layout != "bhsd":
            out = _restore_layout(plan, self.builder_.emit(out), lambda x: x)
        self.set_var_remap(binding.var, self.builder_.emit(out, name_hint=binding.var.name))


def make_composite(block: AttentionBlock, arg_types, add_func) -> relax.Function:
    """The outlined block: dense attention on canonical inputs, typed by `block`'s attributes.

    `add_func(prim_func, name) -> GlobalVar` adds the helper PrimFuncs it calls to the module.
    """
    names = ("q", "k", "v", "mask")
    params = [relax.Var(n, t) for n, t in zip(names, arg_types)]
    q, k, v = params[:3]
    bb = relax.BlockBuilder()
    f32 = "float32"
    with bb.function("composite", params, private=True):
        with bb.dataflow():
            if block.group > 1:
                if block.kv_map == KVMap.TILE:
                    k, v = (bb.emit(relax.op.tile(x, [1, block.group, 1, 1])) for x in (k, v))
                else:
                    k, v = (bb.emit(relax.op.repeat(x, block.group, axis=1)) for x in (k, v))
            qf, kf, vf = (bb.emit(relax.op.astype(x, f32)) for x in (q, k, v))
            s = bb.emit(relax.op.matmul(qf, relax.op.permute_dims(kf, [0, 1, 3, 2])))
            s = bb.emit(relax.op.multiply(s, relax.const(block.scale, f32)))
            if block.has_mask:
                s = bb.emit(relax.op.add(s, relax.op.astype(params[3], f32)))
            if block.causal != CausalMode.NONE:
                sq, skv = arg_types[0].shape.values[2], arg_types[1].shape.values[2]
                gv = add_func(_causal_bias(block.causal), f"sat_causal_bias_{block.causal.value}")
                bias = relax.call_tir(gv, [], relax.TensorType([sq, skv], f32))
                s = bb.emit(relax.op.add(s, bias))
            p = bb.emit(relax.op.nn.softmax(s, axis=-1))
            o = bb.emit(relax.op.astype(relax.op.matmul(p, vf), block.dtype))
            out = bb.emit_output(o)
        bb.emit_func_output(out)
    func = bb.get()["composite"]
    attrs = {"shadowattn.kind": COMPOSITE_KIND, **block.to_attrs()}
    func = func.with_attrs(attrs) if hasattr(func, "with_attrs") else _with_attrs(func, attrs)
    return relax.utils.copy_with_new_vars(func)


def _causal_bias(causal: CausalMode):
    """[Sq, Skv] float32: 0 where visible, -inf elsewhere.

    R.full does not legalize in this TVM wheel (the dtype reaches topi as a PrimType), so the
    dense body gets its causal bias from a PrimFunc of ours.
    """
    sq, skv = tirx.Var("q_len", "int64"), tirx.Var("kv_len", "int64")
    offset = 0 if causal == CausalMode.TOP_LEFT else skv - sq
    bias = te.compute(
        (sq, skv),
        lambda i, j: tirx.Select(j <= i + offset, tirx.const(0.0, "float32"), tirx.const(float("-inf"), "float32")),
        name="causal_bias",
    )
    return te.create_prim_func([bias]).without_attr("global_symbol")


def _with_attrs(func, attrs):
    for key, value in attrs.items():
        func = func.with_attr(key, value)
    return func


__all__ = ["DetectAttention", "COMPOSITE_KIND", "make_composite"]
