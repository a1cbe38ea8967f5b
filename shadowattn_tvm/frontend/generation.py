"""Generation functions of a `decoder` model: prompt chunks into a static-capacity KV cache, decode.

    mod, names = export_generation(config, chunk=256, capacity=2048, chunks=range(1))

``prefill_c<i>(input_ids [1, chunk], kv, [k8,] last [1]) -> logits [1, 1, V]`` writes the chunk's
keys and values into the cache (in place, ``call_tir_inplace``) and attends over cache rows
0..(i+1)·chunk-1 read back from it: plain matmul-softmax attention, bottom-right causal after the
first chunk, which the pass set detects and rewrites. ``decode(token [1, 1], kv, [k8,] pos [1])
-> logits`` writes one row and attends densely over rows 0..pos (`ops.decode`). With `sparse`
(a `SparseDecode`), every function also keeps an INT8 copy of the keys (``k8``) and
``decode_sparse`` attends only over the keys the INT8 pilot ranks highest (`ops.sparse_decode`).
Weights trail every function's inputs in the module's parameter order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._compat import te, tirx
from .architectures import DecoderConfig
from .decoder import _nn, build_decoder, causal_mask


@dataclass(frozen=True)
class SparseDecode:
    """Static INT8 scales and keep ratios per layer and head (from a calibrated profile)."""

    q_scales: tuple  # [layers][heads]
    k_scales: tuple  # [layers][kv_heads]
    ratios: tuple  # [layers][heads]
    k_min: int = 64

    @classmethod
    def from_profile(cls, profile, k_min: int = 64) -> "SparseDecode":
        if not profile.layers or not all(layer.has_scales for layer in profile.layers):
            raise ValueError("sparse decode needs a calibrated profile with static Q/K scales (`shadowattn calibrate`)")
        return cls(tuple(tuple(l.q_scales) for l in profile.layers), tuple(tuple(l.k_scales) for l in profile.layers),
                   tuple(tuple(l.ratios) for l in profile.layers), int(k_min))


def cache_shape(config: DecoderConfig, capacity: int) -> tuple:
    """The KV cache tensor: [layers, 2 (K, V), kv_heads, capacity, head_dim]."""
    return (config.layers, 2, config.kv_heads, capacity, config.head_dim)


def int8_cache_shape(config: DecoderConfig, capacity: int) -> tuple:
    return (config.layers, config.kv_heads, capacity, config.head_dim)


class _Kernels:
    """The cache kernels of one config, called from the traced functions."""

    def __init__(self, config: DecoderConfig, sparse: SparseDecode | None):
        self.config, self.sparse = config, sparse
        nn, _ = _nn()
        if sparse is not None:
            self.qs, self.ks, self.ratios = (nn.Tensor.from_const(np.asarray(x, "float32"))
                                             for x in (sparse.q_scales, sparse.k_scales, sparse.ratios))

    def write(self, kv, k8, k, v, start, layer: int):
        from ..ops.decode import kv_write
        from ..ops.sparse_decode import kv_quantize

        nn, op = _nn()
        c = self.config
        index = tirx.IntImm("int64", layer)
        kv = op.tensor_ir_inplace_op(kv_write(c.layers, c.kv_heads, kv.shape[3], c.head_dim, k.shape[1]), "sat_kv_write",
                                     [kv, k, v, start, index], 0, nn.Tensor.placeholder(kv.shape, kv.dtype))
        if k8 is not None:
            k8 = op.tensor_ir_inplace_op(kv_quantize(c.layers, c.kv_heads, k8.shape[2], c.head_dim, k.shape[1]),
                                         "sat_kv_quantize", [k8, k, start, index, self.ks], 0,
                                         nn.Tensor.placeholder(k8.shape, k8.dtype))
        return kv, k8

    def read(self, kv, layer: int, n: int):
        """Cache rows 0..n-1 of `layer` as K, V [1, n, kv_heads, head_dim]."""
        _, op = _nn()
        hkv, d = self.config.kv_heads, self.config.head_dim

        def compute(kv):
            return [te.compute((1, n, hkv, d), lambda b, s, h, e: kv[layer, which, h, s, e], name=name)
                    for which, name in ((0, "k_rows"), (1, "v_rows"))]

        return op.tensor_expr_op(compute, "kv_read", [kv])

    def attend(self, q, kv, k8, pos, layer: int):
        """One decode row per head: dense over rows 0..pos, or sparse with k8 (`ops.sparse_decode`)."""
        from ..ops.decode import decode_attention
        from ..ops.sparse_decode import sparse_decode_attention

        nn, op = _nn()
        c = self.config
        scale, out = 1.0 / math.sqrt(c.head_dim), nn.Tensor.placeholder((1, 1, c.heads, c.head_dim), "float32")
        index = tirx.IntImm("int64", layer)
        if k8 is None:
            func = decode_attention(c.heads, c.kv_heads, kv.shape[3], c.head_dim, scale, c.sliding_window)
            return op.tensor_ir_op(func, "sat_decode_attention", [q, kv, pos, index], out)
        func = sparse_decode_attention(c.heads, c.kv_heads, kv.shape[3], c.head_dim, scale, self.sparse.k_min,
                                       c.sliding_window)
        return op.tensor_ir_op(func, "sat_sparse_decode_attention", [q, kv, k8, pos, index, self.qs, self.ratios], out)


def _prefill(model, kernels, input_ids, kv, k8, last, start: int, capacity: int):
    nn, _ = _nn()
    config = kernels.config
    P = input_ids.shape[1]
    n = start + P
    x = model.embed_tokens(input_ids)
    cos, sin = model.tables(capacity)
    mask = causal_mask(P, n, config.sliding_window)
    first = nn.Tensor.from_const(np.array([start], "int32"))
    for i, layer in enumerate(model.layers):
        q, k, v = layer.attn.qkv(layer.attn_norm(x), cos, sin, start)
        kv, k8 = kernels.write(kv, k8, k, v, first, i)
        k, v = kernels.read(kv, i, n)  # reading back keeps every write live
        x = x + layer.attn.o_proj(layer.attn.attend(q, k, v, mask))
        x = x + layer.mlp(layer.ffn_norm(x))
    return model.head(_keep(x, k8), last)


def _keep(x, k8):
    """x, made to depend on the final INT8 cache (+ 0.0 read from it) so its in-place writes stay live."""
    if k8 is None:
        return x
    _, op = _nn()

    def compute(k8):
        return te.compute((1, 1, 1), lambda a, b, c: k8[0, 0, 0, 0].astype("float32") * 0.0, name="keep_k8")

    return x + op.tensor_expr_op(compute, "keep_k8", [k8])


def _decode(model, kernels, token, kv, k8, pos, capacity: int, sparse: bool):
    _, op = _nn()
    config = kernels.config
    x = model.embed_tokens(token)
    cos, sin = model.tables(capacity)
    for i, layer in enumerate(model.layers):
        q, k, v = layer.attn.qkv(layer.attn_norm(x), cos, sin, pos)
        kv, k8 = kernels.write(kv, k8, k, v, pos, i)
        out = kernels.attend(q, kv, k8 if sparse else None, pos, i)
        x = x + layer.attn.o_proj(op.reshape(out, (1, 1, config.heads * config.head_dim)))
        x = x + layer.mlp(layer.ffn_norm(x))
    return model.lm_head(model.norm(_keep(x, k8)))


def export_generation(config: DecoderConfig, chunk: int, capacity: int, chunks=None,
                      sparse: SparseDecode | None = None):
    """The module of the module docstring; returns (IRModule, weight names)."""
    nn, _ = _nn()
    if capacity % chunk:
        raise ValueError(f"the capacity ({capacity}) must be a multiple of the prefill chunk ({chunk})")
    chunks = range(capacity // chunk) if chunks is None else chunks
    model = build_decoder(config)
    kernels = _Kernels(config, sparse)
    kv, one = nn.spec.Tensor(list(cache_shape(config, capacity)), "float32"), nn.spec.Tensor([1], "int32")
    caches, cache_names = [kv], ["kv"]
    if sparse is not None:
        caches.append(nn.spec.Tensor(list(int8_cache_shape(config, capacity)), "int8"))
        cache_names.append("k8")

    def method(fn, names, specs):
        return nn.spec.MethodSpec(fn, names, specs, param_mode="plain", effect_mode="none")

    def prefill_fn(start):
        return lambda ids, kv, *rest: _prefill(model, kernels, ids, kv, rest[0] if sparse else None, rest[-1], start,
                                               capacity)

    def decode_fn(sparse_attention: bool):
        return lambda token, kv, *rest: _decode(model, kernels, token, kv, rest[0] if sparse else None, rest[-1],
                                                capacity, sparse_attention)

    spec = {f"prefill_c{c}": method(prefill_fn(c * chunk), ["input_ids", *cache_names, "last"],
                                    [nn.spec.Tensor([1, chunk], "int32"), *caches, one]) for c in chunks}
    token = nn.spec.Tensor([1, 1], "int32")
    spec["decode"] = method(decode_fn(False), ["token", *cache_names, "pos"], [token, *caches, one])
    if sparse is not None:
        spec["decode_sparse"] = method(decode_fn(True), ["token", *cache_names, "pos"], [token, *caches, one])
    mod, named = model.export_tvm(spec=spec)
    return mod, [name for name, _ in named]


__all__ = ["SparseDecode", "cache_shape", "export_generation", "int8_cache_shape"]
