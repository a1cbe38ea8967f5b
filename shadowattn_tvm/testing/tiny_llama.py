"""A tiny random Llama written as a real GGUF file, with a numpy forward to check against.

Exercises the GGUF loader, the tokenizer, the nn.Module and the passes without the 98 MB model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN, THETA = 2, 64, 4, 2, 96, 10000.0
# a byte-level BPE vocabulary: the 256 byte symbols GPT-2 uses, plus a few merges
_BYTES = [chr(c) for c in range(ord("!"), ord("~") + 1)] + [chr(c) for c in range(ord("¡"), ord("¬") + 1)] + \
    [chr(c) for c in range(ord("®"), ord("ÿ") + 1)]
_BYTES += [chr(256 + n) for n in range(256 - len(_BYTES))]
MERGES = ["t h", "Ġ t", "th e", "Ġ a"]
TOKENS = ["<unk>", "<s>", "</s>"] + _BYTES + ["th", "Ġt", "the", "Ġa"]


def write_tiny_gguf(path, seed: int = 0) -> dict:
    """Write the model to `path`; return its float32 weights by GGUF name ([out, in] layout)."""
    import gguf

    rng = np.random.default_rng(seed)
    d = HIDDEN // HEADS
    shapes = {"token_embd.weight": (len(TOKENS), HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        shapes.update({f"blk.{i}.attn_norm.weight": (HIDDEN,), f"blk.{i}.ffn_norm.weight": (HIDDEN,),
                       f"blk.{i}.attn_q.weight": (HEADS * d, HIDDEN), f"blk.{i}.attn_k.weight": (KV_HEADS * d, HIDDEN),
                       f"blk.{i}.attn_v.weight": (KV_HEADS * d, HIDDEN), f"blk.{i}.attn_output.weight": (HIDDEN, HEADS * d),
                       f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN), f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
                       f"blk.{i}.ffn_down.weight": (HIDDEN, FFN)})
    weights = {}
    for name, shape in shapes.items():
        weights[name] = (1.0 + 0.1 * rng.standard_normal(shape) if len(shape) == 1
                         else rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(512)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(THETA)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, w in weights.items():
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


def numpy_forward(weights: dict, ids, return_kv: bool = False):
    """Reference logits [S, vocab] (float64) with interleaved-pair RoPE, GQA and a causal mask; with
    `return_kv` also each layer's rotated K and V [kv_heads, S, head_dim] (a KV cache's content)."""
    d = HIDDEN // HEADS
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    x = w["token_embd.weight"][np.asarray(ids)]
    s = len(ids)
    inv = 1.0 / THETA ** (np.arange(0, d, 2) / d)
    ang = np.arange(s)[:, None] * inv[None]
    cos, sin = np.cos(ang), np.sin(ang)

    def rms(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + 1e-5) * g

    def rope(t):  # t [heads, s, d]
        out = np.empty_like(t)
        out[..., 0::2] = t[..., 0::2] * cos - t[..., 1::2] * sin
        out[..., 1::2] = t[..., 0::2] * sin + t[..., 1::2] * cos
        return out

    cache = []
    for i in range(LAYERS):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(s, HEADS, d).transpose(1, 0, 2))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(s, KV_HEADS, d).transpose(1, 0, 2))
        v = (h @ w[p + "attn_v.weight"].T).reshape(s, KV_HEADS, d).transpose(1, 0, 2)
        cache.append((k, v))
        k, v = np.repeat(k, HEADS // KV_HEADS, 0), np.repeat(v, HEADS // KV_HEADS, 0)
        a = q @ k.transpose(0, 2, 1) / np.sqrt(d) + np.triu(np.full((s, s), -np.inf), 1)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + (a @ v).transpose(1, 0, 2).reshape(s, HIDDEN) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    logits = rms(x, w["output_norm.weight"]) @ w["token_embd.weight"].T
    return (logits, cache) if return_kv else logits


def tiny_gguf_path(directory) -> Path:
    path = Path(directory) / "tiny-llama.gguf"
    write_tiny_gguf(path)
    return path
