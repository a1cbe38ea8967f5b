"""The Adreno lane of a build: each attention block's top-k and sparse attention as OpenCL C.

The GPU takes the two CPU-lane stages of shadowAttn (the NPU computes the pilot scores), so per
attention block of the model we emit `targets.adreno.schedules`'s top-k and sparse-attention kernels,
specialised to the block's static shapes, with the same top_k bound, ratios source and k_min
as `SplitSparseAttention` uses for the CPU module:

    adreno/<kernel>.cl       OpenCL C of one kernel (one file per distinct kernel; layers share)
    adreno/kernels.json      per kernel: file (path in the build), layers, PrimFunc arguments
                             (name, shape, dtype), __kernel name, argument order by name,
                             grid / work-group sizes; "cpu_only": the layers whose CPU-lane
                             stages stay on the CPU, with the reason

A block with an additive mask stays on the CPU: a mask can hide every key of a row (padding), and
such a row must come out as the dense block gives it (softmax over every causally allowed key),
which only the CPU's hand-written kernel computes; the GPU kernel has no dense fallback. A block
split with group selection (one top-k per KV head) stays on the CPU too: the GPU kernels select
per head.

The blocks are read from the compiled IR (`ir_attrs.split_blocks`: what `SplitSparseAttention`
split, with its shapes), so the GPU kernels describe exactly the blocks the CPU module rewrote.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..block import max_keep_count
from ..calibrate.profile import SparsityProfile
from ..ir_attrs import split_blocks
from ..targets.adreno import schedules as adreno
from ..targets.adreno.opencl import OpenCLProgram, build_source

DIRECTORY = "adreno"
TABLE = "kernels.json"


@dataclass(frozen=True)
class AdrenoKernel:
    name: str  # PrimFunc and file stem, e.g. "sat_topk" ("sat_topk_1" for a second variant)
    layers: tuple  # attention layers that run it
    params: tuple  # ((buffer name, shape, dtype), ...) in PrimFunc order
    program: OpenCLProgram

    def to_json(self) -> dict:
        return {"file": f"{DIRECTORY}/{self.name}.cl", "layers": list(self.layers),
                "params": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in self.params],
                **self.program.to_json()}


def attention_blocks(ir) -> list:
    """The `ir_attrs.SplitBlock`s of the blocks the pipeline split in `ir` (the shadowAttn-level IR,
    ``pipeline(lower=False)``); ValueError if a shape is not static."""
    found = split_blocks(ir)
    for split in found:
        shapes = (split.q, split.k, split.v) + (() if split.mask is None else (split.mask,))
        if not all(isinstance(d, int) for shape in shapes for d in shape):
            raise ValueError(f"Adreno kernels need static shapes, got q {split.q}, k {split.k} in layer "
                             f"{split.block.layer}: compile at a fixed length")
    return found


CPU_ONLY_MASKED = ("an additive mask can hide every key of a row, and the GPU kernel has no dense fallback for "
                   "such rows: top-k and sparse attention of this block run on the CPU")
CPU_ONLY_GROUP = ("group selection (one top-k per KV head): the GPU kernels select per head, so top-k and sparse "
                  "attention of this block run on the CPU")


def _cpu_only(split) -> str | None:
    """Why a split block's CPU-lane stages stay on the CPU, or None if the GPU takes them."""
    if split.mask is not None:
        return CPU_ONLY_MASKED
    return CPU_ONLY_GROUP if split.selection == "group" else None


def _variants(blocks, profile: SparsityProfile, k_min: int) -> dict:
    """(kind, definition key) -> (block, specialised shapes, layers) of unmasked blocks."""
    variants: dict = {}
    for split in blocks:
        block, q, k, v = split.block, split.q, split.k, split.v
        ratios = profile.layer(block.layer, block.num_heads, block.num_kv_heads).ratios
        top_k = max_keep_count(max(ratios), k[2], k_min)
        scores, idx = (*q[:3], k[2]), (*q[:3], top_k)
        generic = replace(block, layer=0)  # layers differ only in the number
        topk_shapes = {"S": scores, "RATIO": (block.num_heads,), "IDX": idx}
        sparse_shapes = {"q": q, "k": k, "v": v, "idx": idx, "out": (*q[:3], v[3])}
        for kind, shapes in (("topk", topk_shapes), ("sparse_attention", sparse_shapes)):
            key = (kind, generic, tuple(sorted(shapes.items())))
            variants.setdefault(key, (block, shapes, []))[2].append(block.layer)
    return variants


def _kernel(kind: str, block, k_min: int, shapes: dict):
    if kind == "topk":
        return adreno.specialize(adreno.topk_indices(block, k_min), shapes)
    q, k, v, idx = shapes["q"], shapes["k"], shapes["v"], shapes["idx"]
    return adreno.sparse_attention(block, list(q), k[2], v[3], idx[3])


def adreno_kernels(ir, target, profile: SparsityProfile, k_min: int) -> tuple[list[AdrenoKernel], dict]:
    """The OpenCL kernels of the attention blocks split in `ir` (static shapes) and
    {layer: reason} of the blocks whose CPU-lane stages stay on the CPU."""
    blocks = attention_blocks(ir)
    cpu_only = {split.block.layer: reason for split in blocks if (reason := _cpu_only(split)) is not None}
    kernels, taken = [], {}
    for (kind, _generic, _), (block, shapes, layers) in _variants(
            [split for split in blocks if split.block.layer not in cpu_only], profile, k_min).items():
        base = f"sat_{kind}"
        name = base if base not in taken else f"{base}_{taken[base]}"
        taken[base] = taken.get(base, 0) + 1
        func = _kernel(kind, block, k_min, shapes)
        params = tuple((p.name, tuple(int(d) for d in p.ty.shape), str(p.ty.dtype)) for p in func.params)
        kernels.append(AdrenoKernel(name, tuple(layers), params, build_source({name: func}, target)))
    return kernels, cpu_only


__all__ = ["CPU_ONLY_GROUP", "CPU_ONLY_MASKED", "AdrenoKernel", "DIRECTORY", "TABLE", "adreno_kernels", "attention_blocks"]
