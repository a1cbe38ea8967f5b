"""Model front ends: Llama-family GGUF (our nn.Module) and the embedded default SmolLM2."""
from .gguf_loader import GGUFModel, LlamaConfig, load_gguf
from .smollm2 import smollm2_gguf
from .tokenizer import gguf_tokenizer

__all__ = ["GGUFModel", "LlamaConfig", "load_gguf", "smollm2_gguf", "gguf_tokenizer"]
