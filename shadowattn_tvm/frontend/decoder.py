"""The decoders of the `architectures` table as one `tvm.relax.frontend.nn.Module` (generation's
prefill chunks and decode step over a KV cache are built on it in `frontend.generation`).

Attention is written the ordinary way (matmul, scale, causal mask, softmax, matmul, GQA via HF's
repeat_kv) so that `DetectAttention` finds it like any imported model's. Linear weights are
stored [in, out] (no transpose kernel per call); RoPE tables are float64-computed constants of
the module (not weights); a sliding window, when the model has one, is part of the mask.
"""
from __future__ import annotations

import math

import numpy as np

from .._compat import te, tirx
from .architectures import DecoderConfig, RopeStyle


def _nn():
    from tvm.relax.frontend import nn
    from tvm.relax.frontend.nn import op

    return nn, op


def rope_tables(config: DecoderConfig, length: int):
    """cos, sin [length, head_dim / 2] in float32 (computed in float64)."""
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    angles = np.arange(length, dtype=np.float64)[:, None] * inv[None]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rope(x, cos, sin, style: RopeStyle, offset=0):
    """Rotate x [b, s, h, d] at positions offset + s (offset: an int, or a one-element int32 tensor
    read at run time: a decode step's position)."""
    nn, op = _nn()
    dynamic = isinstance(offset, nn.Tensor)

    def compute(x, cos, sin, *pos_tensor):
        def f(b, s, h, d):
            pos = s + (pos_tensor[0][0].astype("int64") if dynamic else offset)
            if style == RopeStyle.INTERLEAVED:
                half = d // 2
                even = x[b, s, h, d] * cos[pos, half] - x[b, s, h, d + 1] * sin[pos, half]
                odd = x[b, s, h, d - 1] * sin[pos, half] + x[b, s, h, d] * cos[pos, half]
                return tirx.if_then_else(d % 2 == 0, even, odd)
            n = x.shape[3] // 2
            lo = x[b, s, h, d] * cos[pos, d] - x[b, s, h, d + n] * sin[pos, d]
            hi = x[b, s, h, d] * cos[pos, d - n] + x[b, s, h, d - n] * sin[pos, d - n]
            return tirx.if_then_else(d < n, lo, hi)

        return te.compute(x.shape, f, name="rope")

    return op.tensor_expr_op(compute, "rope", [x, cos, sin] + ([offset] if dynamic else []))


def causal_mask(q_len: int, kv_len: int, window: int = 0):
    """[q_len, kv_len] additive mask: key j visible to row i iff j <= i + (kv_len - q_len) (and
    within `window` keys of it when window > 0)."""
    _, op = _nn()
    shift = kv_len - q_len

    def compute():
        def f(i, j):
            visible = j <= i + shift
            if window:
                visible = tirx.all(visible, i + shift - j < window)
            return tirx.Select(visible, tirx.const(0.0, "float32"), tirx.const(float("-inf"), "float32"))

        return te.compute((q_len, kv_len), f, name="causal")

    return op.tensor_expr_op(compute, "causal_mask", [])


def build_decoder(config: DecoderConfig):
    """The nn.Module for `config` (weights unset). ``forward(input_ids [1, S])`` -> logits [1, S, V]."""
    nn, op = _nn()
    H, HKV, D, arch = config.heads, config.kv_heads, config.head_dim, config.arch
    group = H // HKV

    class Linear(nn.Module):
        def __init__(self, n_in, n_out, bias=False):
            self.weight = nn.Parameter((n_in, n_out))
            self.bias = nn.Parameter((n_out,)) if bias else None

        def forward(self, x):
            y = op.matmul(x, self.weight)
            return y + self.bias if self.bias is not None else y

    class RMSNorm(nn.Module):
        def __init__(self, dim):
            self.weight = nn.Parameter((dim,))

        def forward(self, x):
            return op.rms_norm(x, self.weight, axes=[-1], epsilon=config.rms_eps)

    class Attention(nn.Module):
        def __init__(self):
            self.q_proj = Linear(config.hidden, H * D, arch.qkv_bias)
            self.k_proj = Linear(config.hidden, HKV * D, arch.qkv_bias)
            self.v_proj = Linear(config.hidden, HKV * D, arch.qkv_bias)
            self.o_proj = Linear(H * D, config.hidden)
            if arch.qk_norm:
                self.q_norm, self.k_norm = RMSNorm(D), RMSNorm(D)

        def qkv(self, x, cos, sin, offset=0):
            """Q [b, s, H, D] and K, V [b, s, HKV, D], rotated at positions offset + s."""
            b, s, _ = x.shape
            q = op.reshape(self.q_proj(x), (b, s, H, D))
            k = op.reshape(self.k_proj(x), (b, s, HKV, D))
            if arch.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            return (rope(q, cos, sin, arch.rope, offset), rope(k, cos, sin, arch.rope, offset),
                    op.reshape(self.v_proj(x), (b, s, HKV, D)))

        def attend(self, q, k, v, mask):
            """Dense attention of q [b, sq, H, D] over k, v [b, skv, HKV, D] -> [b, sq, H*D]."""
            b, sq, _, _ = q.shape
            skv = k.shape[1]
            q, k, v = (op.permute_dims(t, [0, 2, 1, 3]) for t in (q, k, v))
            if group > 1:  # HF repeat_kv
                k = op.reshape(op.broadcast_to(op.unsqueeze(k, 2), (b, HKV, group, skv, D)), (b, H, skv, D))
                v = op.reshape(op.broadcast_to(op.unsqueeze(v, 2), (b, HKV, group, skv, D)), (b, H, skv, D))
            scores = op.matmul(q, op.permute_dims(k, [0, 1, 3, 2])) * (1.0 / math.sqrt(D))
            probs = op.softmax(scores + mask, axis=-1)
            return op.reshape(op.permute_dims(op.matmul(probs, v), [0, 2, 1, 3]), (b, sq, H * D))

        def forward(self, x, cos, sin, mask):
            q, k, v = self.qkv(x, cos, sin)
            return self.o_proj(self.attend(q, k, v, mask))

    class MLP(nn.Module):
        def __init__(self):
            self.gate = Linear(config.hidden, config.intermediate)
            self.up = Linear(config.hidden, config.intermediate)
            self.down = Linear(config.intermediate, config.hidden)

        def forward(self, x):
            return self.down(op.silu(self.gate(x)) * self.up(x))

    class Layer(nn.Module):
        def __init__(self):
            self.attn_norm, self.attn = RMSNorm(config.hidden), Attention()
            self.ffn_norm, self.mlp = RMSNorm(config.hidden), MLP()

        def forward(self, x, cos, sin, mask):
            x = x + self.attn(self.attn_norm(x), cos, sin, mask)
            return x + self.mlp(self.ffn_norm(x))

    class Decoder(nn.Module):
        def __init__(self):
            self.embed = nn.Parameter((config.vocab, config.hidden))
            self.layers = nn.ModuleList([Layer() for _ in range(config.layers)])
            self.norm = RMSNorm(config.hidden)
            self.lm_head = Linear(config.hidden, config.vocab)

        def embed_tokens(self, input_ids):
            b, s = input_ids.shape
            return op.reshape(op.take(self.embed, op.reshape(input_ids, (b * s,)), axis=0), (b, s, config.hidden))

        def tables(self, length: int):
            cos, sin = rope_tables(config, length)
            return nn.Tensor.from_const(cos), nn.Tensor.from_const(sin)

        def forward(self, input_ids):
            s = input_ids.shape[1]
            x = self.embed_tokens(input_ids)
            cos, sin = self.tables(s)
            mask = causal_mask(s, s, config.sliding_window)
            for layer in self.layers:
                x = layer(x, cos, sin, mask)
            return self.lm_head(self.norm(x))

        def head(self, x, row):
            """Logits [1, 1, V] of one row of x [1, S, hidden] (`row`: a one-element int32 tensor)."""
            return self.lm_head(self.norm(op.take(x, row, axis=1)))

    return Decoder()


__all__ = ["build_decoder", "causal_mask", "rope", "rope_tables"]
