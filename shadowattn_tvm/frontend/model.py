"""`LlamaRunner`: a GGUF Llama compiled by TVM for one sequence length, run from numpy token ids."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._compat import relax, tvm
from .gguf_loader import GGUFModel, load_gguf
from .llama import build_llama, gguf_params
from .smollm2 import smollm2_gguf
from .tokenizer import gguf_tokenizer

MAX_LEN = 8192


def resolve_model(name_or_path) -> GGUFModel:
    """`smollm2` (the embedded default) or a path to a Llama-family GGUF file."""
    if str(name_or_path) in ("smollm2", "default"):
        return load_gguf(smollm2_gguf())
    if str(name_or_path).endswith(".gguf"):
        return load_gguf(name_or_path)
    raise ValueError(f"unknown model {name_or_path!r}: pass 'smollm2' or a path to a .gguf file "
                     "(ONNX files go through shadowattn_tvm.frontend.from_onnx)")


@dataclass
class LlamaRunner:
    model: GGUFModel
    _params: dict = field(default=None, repr=False)
    _tokenizer: object = field(default=None, repr=False)

    @property
    def config(self):
        return self.model.config

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = gguf_tokenizer(self.model.tokens, self.model.merges)
        return self._tokenizer

    def export(self, seq_len: int):
        """(IRModule with `forward(input_ids[1, seq_len]) -> logits`, parameter names in order)."""
        from tvm.relax.frontend import nn

        if seq_len > MAX_LEN:
            raise ValueError(f"seq_len {seq_len} exceeds the RoPE table ({MAX_LEN})")
        module = build_llama(self.config, MAX_LEN)
        mod, named = module.export_tvm(spec={"forward": {"input_ids": nn.spec.Tensor([1, seq_len], "int32")}})
        return mod, [name for name, _ in named]

    def weights(self) -> dict:
        """The exported module's parameters by name, float32 numpy arrays from the GGUF."""
        return gguf_params(self.model, MAX_LEN)

    def compile(self, seq_len: int, relax_pipeline, target=None):
        """Compile for `seq_len` tokens; returns forward(ids [seq_len] int) -> logits [seq_len, vocab]."""
        mod, names = self.export(seq_len)
        if target is None:
            from ..targets import get

            target = get("host").cpu
        ex = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline)
        vm = relax.VirtualMachine(ex, tvm.cpu())
        if self._params is None:
            self._params = {k: tvm.runtime.tensor(v) for k, v in self.weights().items()}
        weights = [self._params[n] for n in names]

        def forward(ids) -> np.ndarray:
            ids = np.asarray(ids, "int32").reshape(1, seq_len)
            return vm["forward"](tvm.runtime.tensor(ids), *weights).numpy()[0]

        return forward
