"""Read a GGUF file's metadata: the decoder config (`architectures` table), the tokenizer, and
which tensor of the file feeds each parameter of our `nn.Module` (a `weights.WeightMap`).

Weights are not read here: `WeightMap.load` dequantises them on demand (the same code a deploy
runs), so opening a model for its config or tokenizer is cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..weights import TensorRef, WeightMap, file_sha256
from .architectures import BLOCK_TENSORS, DecoderConfig, architecture


class GGUFError(ValueError):
    pass


def _reader(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - truncated or foreign files fail in many ways inside gguf
        raise GGUFError(f"{path} is not a readable GGUF file ({type(err).__name__}: {str(err)[:120]}): "
                        "download or convert it again") from None


def _getter(reader):
    def get(key, default=None):
        field = reader.fields.get(key)
        return default if field is None else field.contents()

    return get


def read_metadata(path):
    """`get(key, default)` over the GGUF's metadata fields."""
    return _getter(_reader(Path(path)))


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    config: DecoderConfig
    tensor_names: frozenset
    get: object  # metadata getter

    @property
    def name(self) -> str:
        return str(self.get("general.name", self.path.stem))

    def weight_map(self) -> WeightMap:
        """Parameters of `decoder.build_decoder` -> GGUF tensors; linear weights are stored [out, in]
        in GGUF and used [in, out] by the module (no transpose kernel per call)."""
        tensors = {"embed": TensorRef("token_embd.weight"), "norm.weight": TensorRef("output_norm.weight"),
                   "lm_head.weight": TensorRef("token_embd.weight" if self.config.tie_embeddings else "output.weight",
                                               transpose=True)}
        for i in range(self.config.layers):
            for src, dst in BLOCK_TENSORS.items():
                name = f"blk.{i}.{src}"
                if name in self.tensor_names:
                    tensors[f"layers.{i}.{dst}"] = TensorRef(name, transpose=src.endswith(".weight") and "norm" not in src)
        return WeightMap("gguf", str(self.path.absolute()), file_sha256(self.path), tensors)


def open_gguf(path) -> GGUFFile:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    reader = _reader(path)
    get = _getter(reader)
    arch = architecture(str(get("general.architecture", "?")))
    p = f"{arch.name}."
    names = frozenset(t.name for t in reader.tensors)

    def need(key):
        value = get(p + key)
        if value is None:
            raise GGUFError(f"{path.name}: metadata {p + key} is missing: not a complete {arch.name} GGUF")
        return value

    heads, hidden = int(need("attention.head_count")), int(need("embedding_length"))
    config = DecoderConfig(
        arch=arch, hidden=hidden, intermediate=int(need("feed_forward_length")), layers=int(need("block_count")),
        heads=heads, kv_heads=int(get(p + "attention.head_count_kv", heads)),
        head_dim=int(get(p + "attention.key_length", hidden // heads)),
        vocab=int(get(p + "vocab_size", len(get("tokenizer.ggml.tokens", [])))),
        rope_theta=float(get(p + "rope.freq_base", 10000.0)),
        rms_eps=float(get(p + "attention.layer_norm_rms_epsilon", 1e-6)),
        tie_embeddings="output.weight" not in names, context_length=int(get(p + "context_length", 4096)),
        sliding_window=int(get(p + "attention.sliding_window", 0) or 0),
    )
    required = ["attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight"]
    required += ["attn_q.bias", "attn_k.bias", "attn_v.bias"] if arch.qkv_bias else []
    required += ["attn_q_norm.weight", "attn_k_norm.weight"] if arch.qk_norm else []
    missing = [f"blk.0.{t}" for t in required if f"blk.0.{t}" not in names]
    if missing:
        raise GGUFError(f"{path.name}: tensors {missing} are missing for architecture {arch.name}: not a "
                        f"complete {arch.name} GGUF")
    return GGUFFile(path, config, names, get)


__all__ = ["GGUFError", "GGUFFile", "open_gguf", "read_metadata"]
