"""The decoder architectures our `nn.Module` builds from a GGUF file, as a table of data.

Each entry says how one llama.cpp architecture differs from the plain Llama decoder: biases on
the Q/K/V projections (Qwen2), RMSNorm on Q and K per head (Qwen3), and how its GGUF stores the
rotary layout. Adding an architecture whose attention is standard is one row here.

RoPE layout: llama.cpp's converter permutes the Q/K projection rows of ``llama`` models for its
interleaved-pair rotation, so we rotate interleaved pairs on the stored weights; ``qwen2`` and
``qwen3`` are stored unpermuted for NeoX (rotate-half) rotation. Mistral 7B-style models are
written as ``llama`` by llama.cpp; a sliding window is applied whenever the file declares
``<arch>.attention.sliding_window``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class RopeStyle(str, enum.Enum):
    INTERLEAVED = "interleaved"  # rotate (x[2i], x[2i+1]) pairs: llama.cpp's permuted Llama weights
    HALF = "half"  # rotate (x[i], x[i + d/2]): NeoX / Hugging Face rotate_half


@dataclass(frozen=True)
class Architecture:
    name: str  # general.architecture in the GGUF
    rope: RopeStyle
    qkv_bias: bool = False
    qk_norm: bool = False
    family: str = ""  # what users call it


ARCHITECTURES = {a.name: a for a in (
    Architecture("llama", RopeStyle.INTERLEAVED, family="Llama, SmolLM2, Mistral 7B, TinyLlama"),
    Architecture("qwen2", RopeStyle.HALF, qkv_bias=True, family="Qwen2, Qwen2.5"),
    Architecture("qwen3", RopeStyle.HALF, qk_norm=True, family="Qwen3 (dense)"),
)}

#: GGUF tensor name (per block) -> our module's parameter name; entries a file lacks are skipped
#: (biases, Q/K norms) and the architecture row decides which must be present.
BLOCK_TENSORS = {
    "attn_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
    "attn_q.weight": "attn.q_proj.weight", "attn_k.weight": "attn.k_proj.weight",
    "attn_v.weight": "attn.v_proj.weight", "attn_output.weight": "attn.o_proj.weight",
    "attn_q.bias": "attn.q_proj.bias", "attn_k.bias": "attn.k_proj.bias", "attn_v.bias": "attn.v_proj.bias",
    "attn_q_norm.weight": "attn.q_norm.weight", "attn_k_norm.weight": "attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate.weight", "ffn_up.weight": "mlp.up.weight", "ffn_down.weight": "mlp.down.weight",
}


class UnsupportedArchitecture(ValueError):
    pass


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        known = "; ".join(f"{a.name} ({a.family})" for a in ARCHITECTURES.values())
        raise UnsupportedArchitecture(f"GGUF architecture {name!r} is not supported; supported: {known}. "
                                      "Export the model to ONNX instead (any architecture whose attention the "
                                      "pass set detects)")
    return ARCHITECTURES[name]


@dataclass(frozen=True)
class DecoderConfig:
    """Everything `frontend.decoder.build_decoder` needs, read from a GGUF's metadata."""

    arch: Architecture
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rope_theta: float
    rms_eps: float
    tie_embeddings: bool
    context_length: int
    sliding_window: int = 0  # 0: full causal attention

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def to_json(self) -> dict:
        return {"arch": self.arch.name, "layers": self.layers, "heads": self.heads, "kv_heads": self.kv_heads,
                "head_dim": self.head_dim, "hidden": self.hidden, "vocab": self.vocab,
                "sliding_window": self.sliding_window, "context_length": self.context_length}


__all__ = ["ARCHITECTURES", "Architecture", "BLOCK_TENSORS", "DecoderConfig", "RopeStyle", "UnsupportedArchitecture",
           "architecture"]
