"""Read a Llama-family GGUF file: config, dequantised float32 weights, tokenizer, fingerprint.

llama.cpp stores Q/K projection rows permuted for its interleaved-pair RoPE; we keep that
layout and rotate interleaved pairs (see `llama.py`), which is equivalent to HF's rotate-half
on the unpermuted weights (checked against the reference perplexity).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LlamaConfig:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    rope_theta: float
    rms_eps: float
    tie_embeddings: bool
    bos_id: int
    eos_id: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass
class GGUFModel:
    config: LlamaConfig
    weights: dict  # name -> float32 array, linear weights as [in, out]
    tokens: list
    merges: list
    fingerprint: str


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def load_gguf(path) -> GGUFModel:
    try:
        import gguf
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("reading GGUF needs the `gguf` package: pip install gguf") from err
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no GGUF file at {path}")
    reader = gguf.GGUFReader(str(path))
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path.name}: architecture {arch!r} is not supported (Llama-family GGUF only)")
    p = f"{arch}."
    weights = {}
    for t in reader.tensors:
        shape = [int(x) for x in reversed(t.shape)]
        array = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        if array.ndim == 2 and t.name != "token_embd.weight":
            array = np.ascontiguousarray(array.T)  # [out, in] -> [in, out]: x @ W without a transpose kernel
        weights[t.name] = array
    vocab = len(_field(reader, "tokenizer.ggml.tokens"))
    config = LlamaConfig(
        hidden=int(_field(reader, p + "embedding_length")),
        intermediate=int(_field(reader, p + "feed_forward_length")),
        layers=int(_field(reader, p + "block_count")),
        heads=int(_field(reader, p + "attention.head_count")),
        kv_heads=int(_field(reader, p + "attention.head_count_kv")),
        vocab=int(_field(reader, p + "vocab_size", vocab)),
        rope_theta=float(_field(reader, p + "rope.freq_base", 10000.0)),
        rms_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in weights,
        bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 1)),
        eos_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 2)),
    )
    digest = hashlib.sha256()
    digest.update(repr(config).encode())
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name][..., :8].tobytes()[:4096])
    return GGUFModel(config=config, weights=weights, tokens=list(_field(reader, "tokenizer.ggml.tokens")),
                     merges=list(_field(reader, "tokenizer.ggml.merges")), fingerprint=digest.hexdigest()[:16])
