"""Shape helpers shared by the kernel generators."""
from __future__ import annotations

from .._compat import tirx


def fresh_shape(dims, names) -> tuple:
    """Static dims become Python ints, symbolic ones fresh int64 vars local to one PrimFunc."""
    out = []
    for dim, name in zip(dims, names):
        if isinstance(dim, int):
            out.append(dim)
        elif isinstance(dim, tirx.IntImm):
            out.append(int(dim.value))
        else:
            out.append(tirx.Var(name, "int64"))
    return tuple(out)


def kv_head(h, group: int, num_kv_heads: int, kv_map) -> "tirx.PrimExpr":
    """The KV head a query head reads (interleaved repeat or tiled), see `KVMap`."""
    from ..block import KVMap

    if group == 1:
        return h
    return tirx.floordiv(h, group) if kv_map == KVMap.INTERLEAVE else tirx.floormod(h, num_kv_heads)
