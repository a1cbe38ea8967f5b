"""Model sources behind one protocol (`source.open_model`): the embedded SmolLM2, GGUF decoders of
the `architectures` table (our `decoder` nn.Module), ONNX exports (`from_onnx`), any Relax module."""
from .onnx import from_onnx
from .model import ModelRunner, runner_for
from .smollm2 import smollm2_gguf
from .source import GGUFSource, ModelError, ModelSource, ONNXSource, RelaxSource, open_model
from ..tokenizer import TextTokenizer

__all__ = ["from_onnx", "GGUFSource", "ModelError", "ModelRunner", "ModelSource", "ONNXSource", "RelaxSource",
           "TextTokenizer", "open_model", "runner_for", "smollm2_gguf"]
