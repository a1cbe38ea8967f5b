"""SplitSparseAttention: each attention composite becomes pilot -> top-k -> sparse attention.

Phase 2 of the shadowAttn pipeline; runs after `DetectAttention`. For every call of a composite
(``shadowattn.kind == "attention"``) it emits:

* ``sat_pilot_L<i>(q, k) -> (scores int32, q_scale[H], k_scale[Hkv])``: a Relax function (the
  NPU graph of later phases) that quantises Q and K to int8 with per-head scales, static
  (constants from the profile) or dynamic (absmax/127 at run time), and computes Q·Kᵀ;
* a top-k ``call_tir`` keeping, per head and query row, k = min(V, max(k_min, ceil(r_h·Skv)))
  of the V visible keys, with r_h the head's keep ratio from the profile and Skv the KV length;
* a sparse-attention ``call_tir`` gathering those K/V rows.

``selection="group"`` keeps one selection per KV head and query row instead, shared by
the query heads of the KV group (`ops.topk_group`: a key's rank is the best of the group's heads,
each relative to its own row maximum; the group keeps k by the mean of its heads' ratios), so the
sparse kernel gathers each K/V row once for the whole group. Blocks without grouped heads or
without the hand-written kernel's static head dims keep per-head selection. `BucketPilot` keeps
it in the NPU lane's launch units (each one KV group); the Adreno lane leaves such blocks on the CPU.

Kernels come from `ops/` and are scheduled by the current target's lane (`targets.lanes`). The dense
composite is dropped when unused, so running the pass twice changes nothing.
"""
from __future__ import annotations

import numpy as np

from .._compat import PyExprMutator, mutator, relax, tvm
from ..block import AttentionBlock, ScaleMode, max_keep_count
from ..calibrate.profile import ProfileError, SparsityProfile, check_k_min
from ..ops import pilot as pilot_ops
from ..ops import quantize as quant_ops
from ..ops import sparse_attention as sparse_ops
from ..ops import topk as topk_ops
from ..ops import topk_group as topk_group_ops
from ..targets.lanes import lane_for
from .detect_attention import COMPOSITE_KIND
from ..ir_attrs import SplitBlock, attention_report, split_blocks, with_report, with_split_blocks
from ..report import internal_error

PILOT_KIND = "pilot"


@tvm.transform.module_pass(opt_level=0, name="SplitSparseAttention")
class SplitSparseAttention:
    """Replace attention composites by the pilot / top-k / sparse triple."""

    def __init__(self, profile: SparsityProfile, k_min: int = 16, scale_mode: ScaleMode | None = None,
                 selection: str = "head"):
        if not isinstance(profile, SparsityProfile):
            raise TypeError(f"profile must be a SparsityProfile, got {type(profile).__name__}")
        self.profile, self.k_min = profile, check_k_min(k_min)
        self.scale_mode = None if scale_mode is None else ScaleMode(scale_mode)
        self.selection = check_selection(selection)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        composites = {gv for gv, f in mod.functions.items() if _kind(f) == COMPOSITE_KIND}
        if not composites:
            return mod
        # layers are numbered per function (prefill chunks repeat them): count the distinct numbers
        self.profile.check_layer_count(len({AttentionBlock.from_attrs(mod[gv].attrs).layer for gv in composites}))
        target = tvm.target.Target.current(allow_none=True)
        splitter = _Splitter(mod, composites, self, lane_for(target).kernels())
        report = attention_report(mod)
        mod = relax.transform.DeadCodeElimination()(splitter.transform())
        for (function, layer), reason in splitter.left_dense.items():  # a block this pass cannot split stays dense
            report.mark_dense(layer, reason, function)
        return with_split_blocks(with_report(mod, report), split_blocks(mod) + splitter.split)

    def layer_settings(self, block: AttentionBlock):
        """(ratios, q_scales, k_scales, mode) for one block, checked against the profile."""
        layer = self.profile.layer(block.layer, block.num_heads, block.num_kv_heads)
        mode = self.scale_mode or (ScaleMode.STATIC if layer.has_scales else ScaleMode.DYNAMIC)
        if mode == ScaleMode.STATIC and not layer.has_scales:
            raise ProfileError(
                f"scale_mode='static' needs per-head q_scales/k_scales for layer {block.layer}, and the "
                "profile has none: calibrate a profile, or use scale_mode='dynamic'"
            )
        return layer.ratios, layer.q_scales, layer.k_scales, mode


SELECTIONS = ("head", "group")


def check_selection(selection: str) -> str:
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(map(repr, SELECTIONS))}, got {selection!r}")
    return selection


def _kind(func):
    attrs = getattr(func, "attrs", None)
    return str(attrs["shadowattn.kind"]) if attrs is not None and "shadowattn.kind" in attrs else None


@mutator
class _Splitter(PyExprMutator):
    def __init__(self, mod, composites, owner: SplitSparseAttention, sched):
        super().__init__(mod)
        self.mod, self.composites, self.owner, self.sched = mod, composites, owner, sched
        self.left_dense: dict = {}  # (function, layer) -> why this pass kept its composite
        self.split: list = []  # ir_attrs.SplitBlock of every block split

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod.functions.items():
            if isinstance(func, relax.Function) and gv not in self.composites:
                self.function = gv.name_hint
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, relax.GlobalVar) and call.op in self.composites):
            return call
        self.name = call.op.name_hint.replace("sat_attention_", "", 1)  # L<i>, or <function>_L<i>
        block = AttentionBlock.from_attrs(self.mod[call.op].attrs)
        ratios, q_scales, k_scales, mode = self.owner.layer_settings(block)  # a ProfileError is the user's
        try:
            return self._split(call, block, ratios, q_scales, k_scales, mode)
        except Exception as err:  # noqa: BLE001 - an internal error leaves this block dense, not the build broken
            return self._leave_dense(call, block, internal_error("splitting", err))

    def _leave_dense(self, call, block, reason: str):
        """Keep the composite call (its dense body runs) and say why in the report."""
        self.left_dense[(self.function, block.layer)] = reason
        return call

    def _split(self, call, block, ratios, q_scales, k_scales, mode):
        q, k, v = call.args[:3]
        mask = call.args[3] if block.has_mask else None
        v_dim = _int_or_expr(v.ty.shape.values[3])
        if mask is not None and not sparse_ops.has_fast_kernel(block.head_dim, v_dim):
            return self._leave_dense(call, block, f"additive mask with head dims {block.head_dim}/{v_dim}: rows whose "
                                     "keys are all masked need the hand-written sparse kernel (head_dim a multiple "
                                     "of 16, v_dim of 8)")
        pilot_gv = self.builder_.add_func(self._pilot(block, q.ty, k.ty, mode, q_scales, k_scales),
                                          f"sat_pilot_{self.name}")
        pilot = self.builder_.emit(relax.Call(pilot_gv, [q, k]), name_hint="pilot")
        scores, q_scale, k_scale = (self.builder_.emit(relax.TupleGetItem(pilot, i)) for i in range(3))
        group = self.owner.selection == "group" and block.group > 1 and sparse_ops.has_fast_kernel(block.head_dim, v_dim)
        topk = self._topk_group if group else self._topk
        idx = self.builder_.emit(topk(block, scores, ratios, q_scale, k_scale, mask), name_hint="topk_idx")
        self.split.append(SplitBlock.of(block, *(x.ty for x in (q, k, v)), None if mask is None else mask.ty,
                                        "group" if group else "head"))
        return self._sparse(block, q, k, v, idx, mask, group)

    def _add_kernel(self, func, name):
        """Add a PrimFunc once (structurally equal kernels are shared across layers)."""
        if func.attrs is not None and "global_symbol" in func.attrs:
            func = func.without_attr("global_symbol")  # AttachGlobalSymbol names it after `name`
        return self.builder_.add_func(func, name)

    # ------------------------------------------------------------------ the three stages
    def _pilot(self, block, q_ty, k_ty, mode, q_scales, k_scales) -> relax.Function:
        qv, kv = relax.Var("q", q_ty), relax.Var("k", k_ty)
        q_shape, k_shape = list(q_ty.shape.values), list(k_ty.shape.values)
        q8_ty = relax.TensorType(q_shape, "int8")
        k8t_ty = relax.TensorType(k_shape[:2] + [k_shape[3], k_shape[2]], "int8")
        scores_ty = relax.TensorType(q_shape[:3] + [k_shape[2]], "int32")
        bb, add = relax.BlockBuilder(), self._add_kernel
        with bb.function("pilot", [qv, kv], private=True):
            with bb.dataflow():
                if mode == ScaleMode.STATIC:
                    qs = relax.const(np.asarray(q_scales, "float32"))
                    ks = relax.const(np.asarray(k_scales, "float32"))
                else:
                    absmax_q = add(self.sched.schedule_absmax(quant_ops.absmax_scale(q_shape, block.dtype)), "sat_absmax")
                    absmax_k = add(self.sched.schedule_absmax(quant_ops.absmax_scale(k_shape, block.dtype)), "sat_absmax")
                    qs = bb.emit(relax.call_tir(absmax_q, [qv], relax.TensorType([block.num_heads], "float32")))
                    ks = bb.emit(relax.call_tir(absmax_k, [kv], relax.TensorType([block.num_kv_heads], "float32")))
                quant_q = add(self.sched.schedule_quantize(quant_ops.quantize(q_shape, block.dtype)), "sat_quantize")
                quant_k = add(self.sched.schedule_quantize(quant_ops.quantize(k_shape, block.dtype, transpose=True)),
                              "sat_quantize_t")
                qk = add(self.sched.schedule_pilot(pilot_ops.pilot_scores(block, q_shape, k_shape[2])), "sat_pilot_qk")
                q8 = bb.emit(relax.call_tir(quant_q, [qv, qs], q8_ty))
                k8t = bb.emit(relax.call_tir(quant_k, [kv, ks], k8t_ty))
                scores = bb.emit(relax.call_tir(qk, [q8, k8t], scores_ty))
                out = bb.emit_output(relax.Tuple([scores, qs, ks]))
            bb.emit_func_output(out)
        func = bb.get()["pilot"]
        attrs = {"shadowattn.kind": PILOT_KIND, "shadowattn.scale_mode": mode.value, **block.to_attrs()}
        for key, value in attrs.items():
            func = func.with_attr(key, value)
        return relax.utils.copy_with_new_vars(func)

    def _topk(self, block, scores, ratios, q_scale, k_scale, mask):
        shape = list(scores.ty.shape.values)
        top_k = max_keep_count(max(ratios), _int_or_expr(shape[3]), self.owner.k_min)
        ratio = relax.const(np.asarray(ratios, "float64"), "float64")
        mask_shape = None if mask is None else list(mask.ty.shape.values)
        func = topk_ops.topk_indices(block, self.owner.k_min, mask_shape)
        gv = self._add_kernel(func, "sat_topk_masked" if mask is not None else "sat_topk")
        args = [scores, ratio] + ([q_scale, k_scale, mask] if mask is not None else [])
        return relax.call_tir(gv, args, relax.TensorType(shape[:3] + [top_k], "int32"))

    def _topk_group(self, block, scores, ratios, q_scale, k_scale, mask):
        """One selection per KV head: idx [B,Hkv,Sq,K], budget by the mean ratio of the group's heads."""
        shape = list(scores.ty.shape.values)
        group_ratios = block.group_ratios(ratios)
        top_k = max_keep_count(max(group_ratios), _int_or_expr(shape[3]), self.owner.k_min)
        mask_shape = None if mask is None else list(mask.ty.shape.values)
        func = topk_group_ops.topk_group_indices(block, self.owner.k_min, mask_shape)
        gv = self._add_kernel(func, "sat_topk_group_masked" if mask is not None else "sat_topk_group")
        args = [scores, relax.const(np.asarray(group_ratios, "float64"), "float64"), q_scale, k_scale]
        args += [mask] if mask is not None else []
        return relax.call_tir(gv, args, relax.TensorType([shape[0], block.num_kv_heads, shape[2], top_k], "int32"))

    def _sparse(self, block, q, k, v, idx, mask, group: bool = False):
        q_shape, k_shape, v_shape = (list(x.ty.shape.values) for x in (q, k, v))
        top_k = idx.ty.shape.values[3]
        mask_shape = None if mask is None else list(mask.ty.shape.values)
        make = sparse_ops.sparse_attention_group if group else sparse_ops.sparse_attention
        func = make(block, q_shape, k_shape[2], v_shape[3], top_k, mask_shape)
        gv = self._add_kernel(self.sched.schedule_sparse_attention(func), "sat_sparse_attention")
        args = [q, k, v, idx] + ([mask] if mask is not None else [])
        return relax.call_tir(gv, args, relax.TensorType(q_shape[:3] + [v_shape[3]], block.dtype))


def _int_or_expr(dim):
    from .patterns import static_int

    value = static_int(dim)
    return value if value is not None else dim


__all__ = ["SplitSparseAttention", "PILOT_KIND"]
