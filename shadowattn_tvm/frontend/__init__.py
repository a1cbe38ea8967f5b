"""Model front ends: ONNX (TVM importer + specialisation), Llama-family GGUF (our nn.Module), SmolLM2."""
from .gguf_loader import GGUFModel, LlamaConfig, load_gguf
from .onnx import from_onnx
from .smollm2 import smollm2_gguf
from .tokenizer import gguf_tokenizer

__all__ = ["from_onnx", "GGUFModel", "LlamaConfig", "load_gguf", "smollm2_gguf", "gguf_tokenizer"]
