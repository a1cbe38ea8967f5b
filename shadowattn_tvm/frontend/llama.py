"""A Llama-family decoder as a `tvm.relax.frontend.nn.Module` (prefill: logits for every position).

Attention is written the ordinary way (matmul, scale, causal mask, softmax, matmul, GQA via HF's
repeat_kv) so that `DetectAttention` finds it like any imported model's. Linear weights are
stored [in, out] (no transpose kernel per call); RoPE rotates interleaved pairs to match the
GGUF weight layout, with cos/sin tables computed in float64 at load time.
"""
from __future__ import annotations

import math

import numpy as np

from .._compat import te, tirx
from .gguf_loader import GGUFModel, LlamaConfig


def _nn():
    from tvm.relax.frontend import nn
    from tvm.relax.frontend.nn import op

    return nn, op


def build_llama(config: LlamaConfig, max_len: int):
    """Return an nn.Module instance for `config` (weights unset)."""
    nn, op = _nn()
    H, HKV, D = config.heads, config.kv_heads, config.head_dim
    group = H // HKV

    class Linear(nn.Module):
        def __init__(self, n_in, n_out):
            self.weight = nn.Parameter((n_in, n_out))

        def forward(self, x):
            return op.matmul(x, self.weight)

    class RMSNorm(nn.Module):
        def __init__(self, dim):
            self.weight = nn.Parameter((dim,))

        def forward(self, x):
            return op.rms_norm(x, self.weight, axes=[-1], epsilon=config.rms_eps)

    def rope(x, cos, sin):
        def compute(x, cos, sin):
            def f(b, s, h, d):
                half = d // 2
                even = x[b, s, h, d] * cos[s, half] - x[b, s, h, d + 1] * sin[s, half]
                odd = x[b, s, h, d - 1] * sin[s, half] + x[b, s, h, d] * cos[s, half]
                return tirx.if_then_else(d % 2 == 0, even, odd)

            return te.compute(x.shape, f, name="rope")

        return op.tensor_expr_op(compute, "rope", [x, cos, sin])

    class Attention(nn.Module):
        def __init__(self):
            self.q_proj = Linear(config.hidden, H * D)
            self.k_proj = Linear(config.hidden, HKV * D)
            self.v_proj = Linear(config.hidden, HKV * D)
            self.o_proj = Linear(H * D, config.hidden)

        def forward(self, x, cos, sin, mask):
            b, s, _ = x.shape
            q = rope(op.reshape(self.q_proj(x), (b, s, H, D)), cos, sin)
            k = rope(op.reshape(self.k_proj(x), (b, s, HKV, D)), cos, sin)
            v = op.reshape(self.v_proj(x), (b, s, HKV, D))
            q, k, v = (op.permute_dims(t, [0, 2, 1, 3]) for t in (q, k, v))
            if group > 1:  # HF repeat_kv
                k = op.reshape(op.broadcast_to(op.unsqueeze(k, 2), (b, HKV, group, s, D)), (b, H, s, D))
                v = op.reshape(op.broadcast_to(op.unsqueeze(v, 2), (b, HKV, group, s, D)), (b, H, s, D))
            scores = op.matmul(q, op.permute_dims(k, [0, 1, 3, 2])) * (1.0 / math.sqrt(D))
            probs = op.softmax(scores + mask, axis=-1)
            out = op.permute_dims(op.matmul(probs, v), [0, 2, 1, 3])
            return self.o_proj(op.reshape(out, (b, s, H * D)))

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

    def causal_mask(s):
        def compute():
            return te.compute((s, s), lambda i, j: tirx.Select(
                j <= i, tirx.const(0.0, "float32"), tirx.const(float("-inf"), "float32")), name="causal")

        return op.tensor_expr_op(compute, "causal_mask", [])

    class Llama(nn.Module):
        def __init__(self):
            self.embed = nn.Parameter((config.vocab, config.hidden))
            self.rope_cos = nn.Parameter((max_len, D // 2))
            self.rope_sin = nn.Parameter((max_len, D // 2))
            self.layers = nn.ModuleList([Layer() for _ in range(config.layers)])
            self.norm = RMSNorm(config.hidden)
            self.lm_head = Linear(config.hidden, config.vocab)

        def forward(self, input_ids):
            b, s = input_ids.shape
            x = op.reshape(op.take(self.embed, op.reshape(input_ids, (b * s,)), axis=0), (b, s, config.hidden))
            mask = causal_mask(s)
            cos, sin = self.rope_cos, self.rope_sin  # indexed by position inside the rope kernel
            for layer in self.layers:
                x = layer(x, cos, sin, mask)
            return self.lm_head(self.norm(x))

    return Llama()


def rope_tables(config: LlamaConfig, max_len: int):
    inv = 1.0 / (config.rope_theta ** (np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim))
    angles = np.arange(max_len, dtype=np.float64)[:, None] * inv[None]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


_GGUF_NAMES = {
    "attn_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
    "attn_q.weight": "attn.q_proj.weight", "attn_k.weight": "attn.k_proj.weight",
    "attn_v.weight": "attn.v_proj.weight", "attn_output.weight": "attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate.weight", "ffn_up.weight": "mlp.up.weight", "ffn_down.weight": "mlp.down.weight",
}


def gguf_params(model: GGUFModel, max_len: int) -> dict:
    """Map GGUF tensors onto the nn.Module's parameter names."""
    w = model.weights
    params = {"embed": w["token_embd.weight"], "norm.weight": w["output_norm.weight"],
              "lm_head.weight": np.ascontiguousarray(w["token_embd.weight"].T) if model.config.tie_embeddings
              else w["output.weight"]}
    params["rope_cos"], params["rope_sin"] = rope_tables(model.config, max_len)
    for i in range(model.config.layers):
        for src, dst in _GGUF_NAMES.items():
            params[f"layers.{i}.{dst}"] = w[f"blk.{i}.{src}"]
    return params
