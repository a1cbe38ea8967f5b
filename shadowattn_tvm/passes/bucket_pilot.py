"""BucketPilot: the pilot of every split attention block becomes static NPU graph launches.

Phase 3 of the shadowAttn pipeline; runs after `SplitSparseAttention` (phase 2) and before
`PipelineHeads` (phase 4). Precondition: static batch, head and sequence sizes.

For each ``sat_pilot_L<i>`` -> top-k -> sparse triple it emits one private Relax function
``sat_npu_block_L<i>(q, k, v[, mask])`` (attr ``shadowattn.kind = "npu_block"``) that:

* computes every head's actual scales (absmax / 127, `sat_absmax`) on the CPU;
* per launch unit (batch row × KV group × query chunk, see `npu.units`) calls
  ``shadowattn.npu_run(key, geometry, q, k, λQ, λK, cells, graph_names, stage, graph_cell0, ...)``
  (the calling convention is `npu_abi`'s):
  the NPU lane picks the grid cell nearest the launch's actual scales (`npu.buckets`),
  stages Q rows and the zero-padded K of the group and runs that cell's graph;
* runs top-k on the unit's scores (ranking with the cell's scales when the block has a mask)
  and sparse attention on the unit's head-sliced Q, K and V; a block split with group selection
  (idx [B,Hkv,Sq,K]) keeps it: the unit's heads are one KV group, so its top-k is one selection
  per row for them all (`ops.topk_group`, ranking with the cell's scales) and its sparse
  attention the group kernel;
* assembles the units' outputs in the block's head and row order.

Every graph is `ops.npu_graph.bucket_graph` for one (cell, fused heads, query rows, KV bucket)
with the cell's scales baked in, added as a PrimFunc ``sat_npu_L<i>_f<F>_q<R>_kv<N>_c<cell>``
scheduled for the host (`npu.kernels.host_twin`): the NPU lane runs these twins here; the
Hexagon build compiles the same `BucketSpec`s (read back with `ir_attrs.npu_graphs`). The calls run
synchronously until `PipelineHeads` splits them into asynchronous launches and waits.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..targets.lanes import lane_for
from .._compat import PyExprMutator, constant_value, mutator, relax, tirx, tvm
from ..block import AttentionBlock, CausalMode, KVMap
from ..calibrate.profile import ProfileError, SparsityProfile
from ..npu.buckets import BucketGrid, BucketSpec, GridCenter, ScaleStats
from ..npu.kernels import gather_rows, host_twin, stage_inputs
from ..npu.options import NPUOptions
from ..npu.units import KVBucketError, LaunchUnit, plan_units, unit_ratio
from ..ops import quantize as quant_ops
from ..ops import sparse_attention as sparse_ops
from ..ops import topk as topk_ops
from ..ops import topk_group as topk_group_ops
from ..npu_abi import NPU_RUN
from .patterns import static_int
from .split_sparse_attention import PILOT_KIND

NPU_BLOCK_KIND = "npu_block"



@tvm.transform.module_pass(opt_level=0, name="BucketPilot")
class BucketPilot:
    """Replace each pilot -> top-k -> sparse triple by an NPU-bucketed block function."""

    def __init__(self, options: NPUOptions, profile: SparsityProfile | None = None, k_min: int = 16):
        if not isinstance(options, NPUOptions):
            raise TypeError(f"options must be NPUOptions, got {type(options).__name__}")
        self.options, self.profile, self.k_min = options, profile, int(k_min)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        pilots = {gv for gv, f in mod.functions.items() if _kind(f) == PILOT_KIND}
        if not pilots:
            return mod
        target = tvm.target.Target.current(allow_none=True)
        if target is not None and target.kind.name != "llvm":
            raise ValueError(
                f"BucketPilot builds the NPU graphs' host twins, the lane's staging and the CPU lane's kernels into "
                f"the VM program, which runs on a CPU: compile for an llvm target (the phone's CPU), not "
                f"{target.kind.name!r}"
            )
        mod = _Bucketer(mod, pilots, self, lane_for(target).kernels()).transform()
        return relax.transform.DeadCodeElimination()(mod)

    def layer_stats(self, block: AttentionBlock) -> ScaleStats:
        """Scale statistics of a layer: NPUOptions.stats, else the profile's calibrated scales."""
        stats = self.options.layer_stats(block.layer)
        if stats is None and self.profile is not None and self.profile.layers:
            stats = ScaleStats.from_profile(self.profile.layer(block.layer, block.num_heads, block.num_kv_heads))
        if stats is None:
            raise ProfileError(
                f"BucketPilot needs Q/K scale statistics for attention layer {block.layer} to build its "
                "bucket grid: calibrate a profile with scales (`shadowattn calibrate`), or pass "
                "NPUOptions(stats=ScaleStats.from_samples(q_windows, k_windows)) from sample activations"
            )
        if len(stats.q_mean) != block.num_heads or len(stats.k_mean) != block.num_kv_heads:
            raise ProfileError(f"layer {block.layer}: scale statistics for {len(stats.q_mean)}/{len(stats.k_mean)} "
                             f"heads, the block has {block.num_heads}/{block.num_kv_heads}")
        return stats


def _kind(func):
    attrs = getattr(func, "attrs", None)
    return str(attrs["shadowattn.kind"]) if attrs is not None and "shadowattn.kind" in attrs else None


def _masked_value(dtype: str) -> float:
    """A padded key's additive mask: at or below MASKED_BELOW, finite in the dtype."""
    return -1e9 if dtype == "float32" else float(np.finfo(dtype).min)


@mutator
class _Bucketer(PyExprMutator):
    def __init__(self, mod, pilots, owner: BucketPilot, sched):
        super().__init__(mod)
        self.mod, self.pilots, self.owner, self.sched = mod, pilots, owner, sched
        self.var2val = {}
        self.graph_gvs = {}

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod.functions.items():
            if isinstance(func, relax.Function) and gv not in self.pilots:
                self.var2val = relax.analysis.get_var2val(func)
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def _value(self, expr):
        while isinstance(expr, relax.Var) and expr in self.var2val:
            expr = self.var2val[expr]
        return expr

    def _match(self, call):
        """(pilot call, top-k call) if `call` is the sparse call_tir of a split triple."""
        if call.op != tvm.ir.Op.get("relax.call_tir") or len(call.args[1].fields) < 4:
            return None
        topk = self._value(call.args[1].fields[3])
        if not (isinstance(topk, relax.Call) and topk.op == call.op):
            return None
        item = self._value(topk.args[1].fields[0])
        if not isinstance(item, relax.TupleGetItem) or item.index != 0:
            return None
        pilot = self._value(item.tuple_value)
        if isinstance(pilot, relax.Call) and isinstance(pilot.op, relax.GlobalVar) and pilot.op in self.pilots:
            return pilot, topk
        return None

    def visit_call_(self, call):
        matched = self._match(call)
        if matched is None:
            return super().visit_call_(call)
        pilot, topk = matched
        block = AttentionBlock.from_attrs(self.mod[pilot.op].attrs)
        q, k, v = (self.visit_expr(x) for x in call.args[1].fields[:3])
        mask = self.visit_expr(call.args[1].fields[4]) if block.has_mask else None
        ratios = constant_value(topk.args[1].fields[1])
        if ratios is None:
            raise ValueError(f"layer {block.layer}: the top-k keep ratios are not a constant")
        group = static_int(topk.ty.shape.values[1]) != block.num_heads  # idx per KV head: group selection
        if group:  # each query head takes its KV group's ratio
            ratios = np.asarray(ratios)[block.kv_heads()]
        func = _BlockBuilder(self, block, ratios, q, k, v, mask, group).build()
        gv = self.builder_.add_func(func, pilot.op.name_hint.replace("sat_pilot_", "sat_npu_block_", 1))
        return relax.Call(gv, [q, k, v] + ([mask] if mask is not None else []))

    # ------------------------------------------------------------ shared kernels
    def add_kernel(self, func, name):
        if func.attrs is not None and "global_symbol" in func.attrs:
            func = func.without_attr("global_symbol")
        return self.builder_.add_func(func, name)

    def graph(self, spec: BucketSpec, layer: int, cell: int, group: int | None):
        if spec not in self.graph_gvs:
            name = spec.name(layer, cell, group)
            self.graph_gvs[spec] = self.add_kernel(host_twin(spec), name)
        return self.graph_gvs[spec]


class _BlockBuilder:
    """Emits one ``sat_npu_block_L<i>`` function (see the module docstring)."""

    def __init__(self, outer: _Bucketer, block: AttentionBlock, ratios, q, k, v, mask, group: bool = False):
        self.outer, self.block, self.ratios = outer, block, np.asarray(ratios, np.float64)
        self.group = group
        self.shapes = [_static_shape(x, block) for x in (q, k, v)]
        self.params = [relax.Var(n, x.ty) for n, x in zip("qkv", (q, k, v))]
        if mask is not None:
            self.params.append(relax.Var("mask", mask.ty))
            self.mask_shape = _static_shape(mask, block)
        batch, _, q_len, _ = self.shapes[0]
        kv_len = self.shapes[1][2]
        opts = outer.owner.options
        self.units = plan_units(block, batch, q_len, kv_len, self.ratios, outer.owner.k_min, opts.kv_buckets,
                                opts.q_chunk)
        self.grid = BucketGrid.build(block.layer, outer.owner.layer_stats(block), opts.grid)
        causal = CausalMode.NONE if block.causal == CausalMode.NONE else CausalMode.BOTTOM_RIGHT
        self.unit_block = replace(block, num_heads=block.group, num_kv_heads=1, kv_map=KVMap.INTERLEAVE, causal=causal)

    def build(self) -> relax.Function:
        bb, blk, o = relax.BlockBuilder(), self.block, self.outer
        q, k, v = self.params[:3]
        mask = self.params[3] if blk.has_mask else None
        with bb.function("npu_block", self.params, private=True):
            with bb.dataflow():
                f32 = "float32"
                absmax = [o.add_kernel(o.sched.schedule_absmax(quant_ops.absmax_scale(shape, blk.dtype)), "sat_absmax")
                          for shape in self.shapes[:2]]
                qs = bb.emit(relax.call_tir(absmax[0], [q], relax.TensorType([blk.num_heads], f32)), name_hint="q_scale")
                ks = bb.emit(relax.call_tir(absmax[1], [k], relax.TensorType([blk.num_kv_heads], f32)),
                             name_hint="k_scale")
                stage = o.add_kernel(stage_inputs(blk.dtype, blk.head_dim), "sat_npu_stage")
                outs, kv_cache = {}, {}
                for unit in self.units:
                    outs[unit] = self._unit(bb, unit, q, k, v, mask, qs, ks, stage, kv_cache)
                out = bb.emit_output(self._assemble(bb, outs))
            bb.emit_func_output(out)
        func = bb.get()["npu_block"]
        attrs = {"shadowattn.kind": NPU_BLOCK_KIND, "shadowattn.npu_units": len(self.units),
                 "shadowattn.npu_cells": self.grid.num_cells, "shadowattn.selection": "group" if self.group else "head",
                 **blk.to_attrs()}
        for key, value in attrs.items():
            func = func.with_attr(key, value)
        return func

    # ------------------------------------------------------------ one launch unit
    def _unit(self, bb, u: LaunchUnit, q, k, v, mask, qs, ks, stage, kv_cache):
        blk, o = self.block, self.outer
        group = u.kv_head if o.owner.options.grid.center == GridCenter.HEAD else None
        graphs = []
        for cell in range(self.grid.num_cells):
            spec = BucketSpec(u.fused, u.q_rows, u.kv_len, blk.head_dim,
                              tuple(self.grid.q_scales[cell][h] for h in u.heads),
                              self.grid.k_scales[cell][u.kv_head], blk.dtype)
            graphs.append(o.graph(spec, blk.layer, cell, group))
        table = relax.const(self.grid.cell_table(u.heads, u.kv_head))
        ret = relax.TupleType([relax.TensorType([1, u.fused, u.q_rows, u.kv_len], "int32"),
                               relax.TensorType([u.fused], "float32"), relax.TensorType([1], "float32")])
        name = u.key.replace(".", "_")
        names = tvm.ir.StringImm(",".join(g.name_hint for g in graphs))  # the NPU library's symbols (npu_abi)
        run = bb.emit(relax.op.call_pure_packed(NPU_RUN, tvm.ir.StringImm(u.key), relax.ShapeExpr(list(u.geometry())),
                                                q, k, qs, ks, table, names, stage, *graphs, ty_args=[ret]),
                      name_hint=f"npu_{name}")
        scores = bb.emit(relax.TupleGetItem(run, 0), name_hint=f"scores_{name}")
        q_u = self._rows(bb, q, u)
        if mask is not None:
            k_u, v_u = self._kv(bb, k, u, u.kv_len, kv_cache), self._kv(bb, v, u, u.kv_len, kv_cache)
            m_u = self._mask(bb, mask, u)
            extra_topk = [bb.emit(relax.TupleGetItem(run, 1)), bb.emit(relax.TupleGetItem(run, 2)), m_u]
            mask_shape = [int(x) for x in m_u.ty.shape.values]
        else:
            need = max(self.shapes[1][2], u.kv_len if u.q_rows > u.rows else 0)
            k_u, v_u = self._kv(bb, k, u, need, kv_cache), self._kv(bb, v, u, need, kv_cache)
            extra_topk, m_u, mask_shape = [], None, None
        ratios = unit_ratio(self.ratios[list(u.heads)], self.shapes[1][2], u.kv_len)
        if self.group:  # the group's ratio; it always ranks by the cell's scales
            if not extra_topk:
                extra_topk = [bb.emit(relax.TupleGetItem(run, 1)), bb.emit(relax.TupleGetItem(run, 2))]
            ratios, args = ratios[:1], extra_topk
            topk_fn = topk_group_ops.topk_group_indices(self.unit_block, o.owner.k_min, mask_shape)
            topk_name = "sat_topk_group_masked" if mask is not None else "sat_topk_group"
        else:
            topk_fn, args = topk_ops.topk_indices(self.unit_block, o.owner.k_min, mask_shape), extra_topk
            topk_name = "sat_topk_masked" if mask is not None else "sat_topk"
        topk = o.add_kernel(topk_fn, topk_name)
        idx_ty = relax.TensorType([1, 1 if self.group else u.fused, u.q_rows, u.top_k], "int32")
        idx = bb.emit(relax.call_tir(topk, [scores, relax.const(ratios, "float64")] + args, idx_ty),
                      name_hint=f"idx_{name}")
        dv = self.shapes[2][3]
        make_sparse = sparse_ops.sparse_attention_group if self.group else sparse_ops.sparse_attention
        sparse_fn = make_sparse(self.unit_block, [1, u.fused, u.q_rows, blk.head_dim], int(k_u.ty.shape.values[2]),
                                dv, u.top_k, mask_shape)
        sparse = o.add_kernel(o.sched.schedule_sparse_attention(sparse_fn), "sat_sparse_attention")
        out = bb.emit(relax.call_tir(sparse, [q_u, k_u, v_u, idx] + ([m_u] if m_u is not None else []),
                                     relax.TensorType([1, u.fused, u.q_rows, dv], blk.dtype)), name_hint=f"out_{name}")
        if u.q_rows > u.rows:
            out = bb.emit(relax.op.strided_slice(out, axes=[2], begin=[0], end=[u.rows]))
        return out

    def _gather(self, bb, x, out_shape, scalars, fill: float = 0.0):
        """One `npu.kernels.gather_rows` call (the unit's slice, padded with `fill`)."""
        kernel = self.outer.add_kernel(gather_rows(self.block.dtype, fill), "sat_npu_gather")
        args = [x] + [relax.prim_value(tirx.IntImm("int64", int(v))) for v in scalars]
        return bb.emit(relax.call_tir(kernel, args, relax.TensorType(out_shape, self.block.dtype)))

    def _rows(self, bb, x, u: LaunchUnit):
        """q[b, heads of u, rows of u] as [1, fused, q_rows, D], zero rows past the chunk."""
        d = self.shapes[0][3]
        return self._gather(bb, x, [1, u.fused, u.q_rows, d], [u.batch, u.head0, u.head_stride, u.row0, u.rows, d])

    def _kv(self, bb, x, u: LaunchUnit, length: int, cache):
        """K or V of the unit's (batch row, KV head) as [1, 1, length, D], cut or zero-padded."""
        key = (x, u.batch, u.kv_head, length)
        if key not in cache:
            _, _, kv_len, d = self.shapes[1] if x is self.params[1] else self.shapes[2]
            cache[key] = self._gather(bb, x, [1, 1, length, d], [u.batch, u.kv_head, 0, 0, min(length, kv_len), d])
        return cache[key]

    def _mask(self, bb, mask, u: LaunchUnit):
        """The unit's mask tile [1, fused | 1, q_rows, kv_len]; padded rows and keys are masked."""
        mb, mh, _, kv_len = self.mask_shape
        heads = u.fused if mh > 1 else 1
        scalars = [u.batch if mb > 1 else 0, u.head0 if mh > 1 else 0, u.head_stride if mh > 1 else 0, u.row0, u.rows,
                   min(kv_len, u.kv_len)]
        return self._gather(bb, mask, [1, heads, u.q_rows, u.kv_len], scalars, _masked_value(self.block.dtype))

    # ------------------------------------------------------------ output
    def _assemble(self, bb, outs):
        blk = self.block
        per_batch = []
        for b in range(self.shapes[0][0]):
            groups = []
            for g in range(blk.num_kv_heads):
                parts = [outs[u] for u in self.units if u.batch == b and u.kv_head == g]
                groups.append(parts[0] if len(parts) == 1 else bb.emit(relax.op.concat(parts, axis=2)))
            if blk.num_kv_heads == 1:
                heads = groups[0]
            elif blk.kv_map == KVMap.TILE:  # head h = g + f * Hkv: interleave the groups
                stacked = bb.emit(relax.op.concat([bb.emit(relax.op.expand_dims(x, 1)) for x in groups], axis=1))
                moved = bb.emit(relax.op.permute_dims(stacked, [0, 2, 1, 3, 4]))
                heads = bb.emit(relax.op.reshape(moved, [1, blk.num_heads, self.shapes[0][2], self.shapes[2][3]]))
            else:
                heads = bb.emit(relax.op.concat(groups, axis=1))
            per_batch.append(heads)
        return per_batch[0] if len(per_batch) == 1 else bb.emit(relax.op.concat(per_batch, axis=0))


def _static_shape(expr, block: AttentionBlock) -> list:
    dims = [static_int(d) for d in expr.ty.shape.values]
    if any(d is None for d in dims):
        raise KVBucketError(
            f"attention layer {block.layer}: NPU graphs need static shapes, got {list(expr.ty.shape.values)}; "
            "bind symbolic lengths first (relax.transform.BindSymbolicVars) or compile without npu="
        )
    return dims


__all__ = ["BucketPilot", "NPU_BLOCK_KIND"]
