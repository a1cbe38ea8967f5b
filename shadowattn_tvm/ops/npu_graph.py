"""One NPU pilot graph (a "bucket"): static shapes, static int8 scales, int32 Q·Kᵀ.

An NPU graph is compiled offline with fixed shapes and quantisation constants, so the pilot is
specialised per bucket: `fused` heads launched together, a query chunk of `q_chunk` rows, K
padded to `kv_len` keys, and the chosen grid cell's scales baked in (one λQ per fused head,
one λK for the group's KV head):

    q [fused, q_chunk, D], k [kv_len, D] (float) -> scores [fused, q_chunk, kv_len] int32
    scores[h] = int8(clip(rint(q[h] / qs[h]))) · int8(clip(rint(k / ks)))ᵀ

The fused heads are one GQA group's (or a part of it): they share one KV head, so K comes in
once, is quantized once and every head's scores are taken against it. No mask: padded keys
and causally hidden ones are skipped by top-k. Same definition as `reference.quantize` +
`reference.pilot_scores`, so host twins are checked bit-exactly.

Every graph carries its parameters as the function attribute `BUCKET_ATTR` (`bucket_params`
reads them back), so a target build can derive its own variant of the same graph:
`bucket_graph_hvx` is the one the Hexagon build compiles (see its docstring).
"""
from __future__ import annotations

from .._compat import T, fast_script_parsing, te, tirx
from ..ir_attrs import BUCKET

BUCKET_ATTR = BUCKET  # the IR attribute the NPU library rebuilds a graph from (`ir_attrs`)
HVX_KEYS = 32  # int32 lanes of one 128-byte HVX vector: keys per vrmpy
HVX_DEPTH = 4  # bytes one vrmpy lane reduces: head_dim steps per vrmpy


def _per_head(values, h, dtype="float32"):
    """A per-head constant as nested selects: constants stay inside the graph, not in inputs."""
    expr = tirx.const(float(values[-1]), dtype)
    for i in range(len(values) - 2, -1, -1):
        expr = tirx.Select(h == i, tirx.const(float(values[i]), dtype), expr)
    return expr


def _int8(value):
    return tirx.max(tirx.min(tirx.nearbyint(value), 127.0), -127.0).astype("int8")


def bucket_graph(fused: int, q_chunk: int, kv_len: int, head_dim: int, q_scales, k_scale: float,
                 dtype: str = "float32"):
    """Unscheduled PrimFunc of one bucket (see module docstring); scales are Python floats."""
    params = _params(fused, q_chunk, kv_len, head_dim, q_scales, k_scale, dtype)
    q = te.placeholder((fused, q_chunk, head_dim), dtype, name="q")
    k = te.placeholder((kv_len, head_dim), dtype, name="k")
    ks = tirx.const(params["k_scale"], "float32")
    q8 = te.compute((fused, q_chunk, head_dim),
                    lambda h, s, d: _int8(q[h, s, d].astype("float32") / _per_head(q_scales, h)), name="q8")
    k8 = te.compute((kv_len, head_dim), lambda s, d: _int8(k[s, d].astype("float32") / ks), name="k8")
    rd = te.reduce_axis((0, head_dim), "rd")
    scores = te.compute(
        (fused, q_chunk, kv_len),
        lambda h, i, j: te.sum(q8[h, i, rd].astype("int32") * k8[j, rd].astype("int32"), axis=rd),
        name="scores",
    )
    func = te.create_prim_func([q, k, scores]).without_attr("global_symbol")
    return func.with_attr(BUCKET_ATTR, params)


def _params(fused, q_chunk, kv_len, head_dim, q_scales, k_scale, dtype) -> dict:
    if len(q_scales) != fused:
        raise ValueError(f"need {fused} q scales, got {len(q_scales)}")
    return {"fused": int(fused), "q_chunk": int(q_chunk), "kv_len": int(kv_len), "head_dim": int(head_dim),
            "q_scales": [float(v) for v in q_scales], "k_scale": float(k_scale), "dtype": str(dtype)}


def bucket_params(func) -> dict:
    """The `bucket_graph` arguments a graph was built from (keyword dict); ValueError if none."""
    attrs = func.attrs if func.attrs is not None else {}
    if BUCKET_ATTR not in attrs:
        raise ValueError(f"not a bucket graph: the PrimFunc has no {BUCKET_ATTR!r} attribute "
                         "(build it with ops.npu_graph.bucket_graph)")
    raw = attrs[BUCKET_ATTR]
    return {"fused": int(raw["fused"]), "q_chunk": int(raw["q_chunk"]), "kv_len": int(raw["kv_len"]),
            "head_dim": int(raw["head_dim"]), "q_scales": [float(v) for v in raw["q_scales"]],
            "k_scale": float(raw["k_scale"]), "dtype": str(raw["dtype"])}


def _rint_clip(v):
    """int32 ``clip(rint(v), -127, 127)`` of a float32 `v`, exactly, with no rounding library call.

    Clamping to ±128 first keeps |v| < 2**22, where adding 1.5 * 2**23 rounds v to an integer
    (IEEE round-half-even, numpy's rint) held in the low mantissa bits; subtracting the constant's
    bit pattern reads it out. `nearbyint` would become a `nearbyintf` libcall on Hexagon, and a
    truncating cast plus compares costs ~3x the instructions.
    """
    magic = tirx.const(12582912.0, "float32")  # 1.5 * 2**23, bit pattern 0x4B400000
    clamped = tirx.max(tirx.min(v, tirx.const(128.0, "float32")), tirx.const(-128.0, "float32"))
    value = tirx.reinterpret("int32", clamped + magic) - tirx.const(0x4B400000, "int32")
    return tirx.max(tirx.min(value, 127), -127)


def signed_byte(word, k):
    """Signed byte `k` (0 = least significant) of int32 `word`: how the HVX graph reads Q."""
    return tirx.shift_right(tirx.shift_left(word, 24 - k * 8), 24)


@fast_script_parsing()
def bucket_graph_hvx(fused: int, q_chunk: int, kv_len: int, head_dim: int, q_scales, k_scale: float,
                     dtype: str = "float32"):
    """`bucket_graph`'s graph (same arguments, same result bit for bit) in the form HVX wants.

    HVX multiplies bytes only unsigned x unsigned or unsigned x signed: `vrmpybus` takes 32 lanes
    of 4 unsigned bytes from a vector and 4 signed bytes from a scalar register, accumulating 32
    int32 dot products. So K, the vector side (32 keys per vector), is shifted to uint8 and the
    shift is undone with Q's row sum (Σ q·k = Σ q·(k+128) - 128·Σ q), one scalar per query row:

        q8 [F, QC, DO] int32         quantized Q, 4 int8 per word (byte k = dim 4*do + k), the
                                     scalar operand as is; head_dim zero-padded to 4*DO
        q_bias [F, QC] int32         -128 * Σ q8 bytes
        k_u8 [KVP/32, DO, 32, 4] uint8      k8 + 128 of the group's one K head, packed so one
                                     vrmpy reads 128 bytes; KVP = ceil(kv_len/32)*32, padding
                                     holds 128 (k8 = 0); shared by the F heads
        acc [F, QC, KVP] int32       Σ q8 · k_u8
        scores [F, QC, kv_len]       acc + q_bias

    Quantization rounds with `_rint_clip` (integer ops after one float add) so the stages stay
    scalar and exact; `targets.hexagon.schedules.schedule_bucket_graph` maps acc onto vrmpy.
    """
    params = _params(fused, q_chunk, kv_len, head_dim, q_scales, k_scale, dtype)
    F, QC, KV, D = params["fused"], params["q_chunk"], params["kv_len"], params["head_dim"]
    DO = -(-D // HVX_DEPTH)
    KVP = -(-KV // HVX_KEYS) * HVX_KEYS
    JO = KVP // HVX_KEYS

    def q_byte(x, h, k):
        """Byte k of a Q word: the quantized value of dim 4*do + k, or 0 past head_dim."""
        value = tirx.bitwise_and(_rint_clip(x.astype("float32") / _per_head(params["q_scales"], h)), 255)
        return tirx.shift_left(value, 8 * k)

    def k_int(x):
        return _rint_clip(x.astype("float32") / tirx.const(params["k_scale"], "float32"))

    # T.min keeps the padded lanes' (never used) reads inside the buffers for region analysis
    @T.prim_func(private=True, s_tir=True)
    def graph(q: T.Buffer((F, QC, D), dtype), k: T.Buffer((KV, D), dtype),
              scores: T.Buffer((F, QC, KV), "int32")):
        T.func_attr({"tirx.noalias": True})
        q8 = T.sblock_alloc_buffer((F, QC, DO), "int32")
        q_bias = T.sblock_alloc_buffer((F, QC), "int32")
        k_u8 = T.sblock_alloc_buffer((JO, DO, HVX_KEYS, HVX_DEPTH), "uint8")
        acc = T.sblock_alloc_buffer((F, QC, KVP), "int32")
        for h, s, do, b in T.grid(F, QC, DO, HVX_DEPTH):
            with T.sblock("q8"):
                vh, vs, vdo, vb = T.axis.remap("SSSR", [h, s, do, b])
                with T.init():
                    q8[vh, vs, vdo] = 0
                q8[vh, vs, vdo] = q8[vh, vs, vdo] | T.if_then_else(
                    vdo * HVX_DEPTH + vb < D, q_byte(q[vh, vs, T.min(vdo * HVX_DEPTH + vb, D - 1)], vh, vb), 0)
        for h, s, do, b in T.grid(F, QC, DO, HVX_DEPTH):
            with T.sblock("q_bias"):
                vh, vs, vdo, vb = T.axis.remap("SSRR", [h, s, do, b])
                with T.init():
                    q_bias[vh, vs] = 0
                q_bias[vh, vs] = q_bias[vh, vs] - signed_byte(q8[vh, vs, vdo], vb) * 128
        for jo, do, ji, di in T.grid(JO, DO, HVX_KEYS, HVX_DEPTH):
            with T.sblock("k_u8"):
                vjo, vdo, vji, vdi = T.axis.remap("SSSS", [jo, do, ji, di])
                k_u8[vjo, vdo, vji, vdi] = T.if_then_else(
                    vjo * HVX_KEYS + vji < KV and vdo * HVX_DEPTH + vdi < D,
                    T.Cast("uint8", k_int(k[T.min(vjo * HVX_KEYS + vji, KV - 1), T.min(vdo * HVX_DEPTH + vdi, D - 1)])
                           + 128),
                    T.uint8(128))
        for h, i, j, ro, ri in T.grid(F, QC, KVP, DO, HVX_DEPTH):
            with T.sblock("acc"):
                vh, vi, vj, vro, vri = T.axis.remap("SSSRR", [h, i, j, ro, ri])
                with T.init():
                    acc[vh, vi, vj] = 0
                acc[vh, vi, vj] = acc[vh, vi, vj] + signed_byte(q8[vh, vi, vro], vri) * T.Cast(
                    "int32", k_u8[vj // HVX_KEYS, vro, vj % HVX_KEYS, vri])
        for h, i, j in T.grid(F, QC, KV):
            with T.sblock("scores"):
                vh, vi, vj = T.axis.remap("SSS", [h, i, j])
                scores[vh, vi, vj] = acc[vh, vi, vj] + q_bias[vh, vi]

    return graph.with_attr(BUCKET_ATTR, params)


def hvx_variant(func):
    """`bucket_graph_hvx` of the same parameters as bucket graph `func` (either form)."""
    return bucket_graph_hvx(**bucket_params(func))
