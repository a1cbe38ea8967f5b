"""The Adreno lane of a build: each attention block's top-k and sparse attention as OpenCL C.

The GPU takes the two CPU-lane stages of shadowAttn (the NPU computes the pilot scores), so per
attention block of the model we emit `schedules.adreno`'s top-k and sparse-attention kernels,
specialised to the block's static shapes, with the same top_k bound, ratios source and k_min
as `SplitSparseAttention` uses for the CPU module:

    adreno/<kernel>.cl       OpenCL C of one kernel (one file per distinct kernel; layers share)
    adreno/kernels.json      per kernel: file (path in the build), layers, PrimFunc arguments
                             (name, shape, dtype), __kernel name, argument order by name,
                             grid / work-group sizes

The blocks are found the way the pipeline finds them (canonicalize, then `DetectAttention`), so
the GPU kernels describe exactly the blocks the CPU module rewrote.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .._compat import relax, tvm
from ..block import AttentionBlock, max_keep_count
from ..calibrate.profile import SparsityProfile
from ..passes import DetectAttention
from ..passes.detect_attention import COMPOSITE_KIND
from ..schedules import adreno
from ..targets.opencl import OpenCLProgram, build_source

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


def _shape(ty) -> tuple:
    dims = tuple(getattr(d, "value", None) for d in ty.shape.values)
    if any(not isinstance(d, int) for d in dims):
        raise ValueError(f"Adreno kernels need static shapes, got {ty.shape}")
    return dims


def attention_blocks(mod) -> list:
    """[(AttentionBlock, q, k, v, mask-or-None shapes)] of the blocks the pipeline would rewrite."""
    mod = tvm.transform.Sequential([relax.transform.Normalize(), relax.transform.FoldConstant(),
                                    DetectAttention()])(mod)
    found = []
    for func in mod.functions.values():
        attrs = getattr(func, "attrs", None)
        if attrs is None or "shadowattn.kind" not in attrs or str(attrs["shadowattn.kind"]) != COMPOSITE_KIND:
            continue
        block = AttentionBlock.from_attrs(attrs)
        shapes = [_shape(p.ty) for p in func.params[:4 if block.has_mask else 3]]
        found.append((block, *shapes[:3], shapes[3] if block.has_mask else None))
    return sorted(found, key=lambda item: item[0].layer)


def _variants(blocks, profile: SparsityProfile, k_min: int) -> dict:
    """(kind, definition key) -> (generator kwargs, specialised shapes, layers)."""
    variants: dict = {}
    for block, q, k, v, mask in blocks:
        ratios = profile.layer(block.layer, block.num_heads, block.num_kv_heads).ratios
        top_k = max_keep_count(max(ratios), k[2], k_min)
        scores, idx = (*q[:3], k[2]), (*q[:3], top_k)
        generic = replace(block, layer=0)  # layers differ only in the number
        topk_shapes = {"S": scores, "RATIO": (block.num_heads,), "IDX": idx}
        if mask is not None:
            topk_shapes.update(QS=(block.num_heads,), MASK=mask)
        sparse_shapes = {"q": q, "k": k, "v": v, "idx": idx, "out": (*q[:3], v[3])}
        if mask is not None:
            sparse_shapes["mask"] = mask
        for kind, shapes in (("topk", topk_shapes), ("sparse_attention", sparse_shapes)):
            key = (kind, generic, tuple(sorted(shapes.items())))
            entry = variants.setdefault(key, (block, k_min, shapes, mask, []))
            entry[4].append(block.layer)
    return variants


def _kernel(kind: str, block, k_min: int, shapes: dict, mask):
    if kind == "topk":
        return adreno.specialize(adreno.topk_indices(block, k_min, mask), shapes)
    q, k, v, idx = shapes["q"], shapes["k"], shapes["v"], shapes["idx"]
    return adreno.sparse_attention(block, list(q), k[2], v[3], idx[3], mask)


def adreno_kernels(mod, target, profile: SparsityProfile, k_min: int) -> list[AdrenoKernel]:
    """The OpenCL kernels of every attention block of `mod` (a static-shape Relax module)."""
    kernels, taken = [], {}
    for (kind, _generic, _), (block, kmin, shapes, mask, layers) in _variants(
            attention_blocks(mod), profile, k_min).items():
        base = f"sat_{kind}" + ("_masked" if kind == "topk" and mask is not None else "")
        name = base if base not in taken else f"{base}_{taken[base]}"
        taken[base] = taken.get(base, 0) + 1
        func = _kernel(kind, block, kmin, shapes, mask)
        params = tuple((p.name, tuple(int(d) for d in p.ty.shape), str(p.ty.dtype)) for p in func.params)
        kernels.append(AdrenoKernel(name, tuple(layers), params, build_source({name: func}, target)))
    return kernels


__all__ = ["AdrenoKernel", "DIRECTORY", "TABLE", "adreno_kernels", "attention_blocks"]
