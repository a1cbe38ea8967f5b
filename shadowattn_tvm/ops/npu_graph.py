"""One NPU pilot graph (a "bucket"): static shapes, static int8 scales, int32 Q·Kᵀ.

An NPU graph is compiled offline with fixed shapes and quantisation constants, so the pilot is
specialised per bucket: `fused` heads launched together, a query chunk of `q_chunk` rows, K
padded to `kv_len` keys, and per fused head the (Q, K) scales of the chosen grid cell baked in:

    q [fused, q_chunk, D], k [fused, kv_len, D] (float) -> scores [fused, q_chunk, kv_len] int32
    scores[h] = int8(clip(rint(q[h] / qs[h]))) · int8(clip(rint(k[h] / ks[h])))ᵀ

K rows are the fused heads' own KV rows (a GQA group passes its KV head once per head). No
mask: padded keys and causally hidden ones are skipped by top-k. Same definition as
`reference.quantize` + `reference.pilot_scores`, so host twins are checked bit-exactly.
"""
from __future__ import annotations

from .._compat import te, tirx


def _per_head(values, h, dtype="float32"):
    """A per-head constant as nested selects: constants stay inside the graph, not in inputs."""
    expr = tirx.const(float(values[-1]), dtype)
    for i in range(len(values) - 2, -1, -1):
        expr = tirx.Select(h == i, tirx.const(float(values[i]), dtype), expr)
    return expr


def bucket_graph(fused: int, q_chunk: int, kv_len: int, head_dim: int, q_scales, k_scales, dtype: str = "float32"):
    """Unscheduled PrimFunc of one bucket (see module docstring); scales are Python floats."""
    if len(q_scales) != fused or len(k_scales) != fused:
        raise ValueError(f"need {fused} q and k scales, got {len(q_scales)} and {len(k_scales)}")
    q = te.placeholder((fused, q_chunk, head_dim), dtype, name="q")
    k = te.placeholder((fused, kv_len, head_dim), dtype, name="k")

    def quant(x, scales):
        def f(h, s, d):
            value = tirx.nearbyint(x[h, s, d].astype("float32") / _per_head(scales, h))
            return tirx.max(tirx.min(value, 127.0), -127.0).astype("int8")
        return f

    q8 = te.compute((fused, q_chunk, head_dim), quant(q, q_scales), name="q8")
    k8 = te.compute((fused, kv_len, head_dim), quant(k, k_scales), name="k8")
    rd = te.reduce_axis((0, head_dim), "rd")
    scores = te.compute(
        (fused, q_chunk, kv_len),
        lambda h, i, j: te.sum(q8[h, i, rd].astype("int32") * k8[h, j, rd].astype("int32"), axis=rd),
        name="scores",
    )
    return te.create_prim_func([q, k, scores]).without_attr("global_symbol")
