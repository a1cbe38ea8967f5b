"""`ModelRunner`: a `ModelSource` compiled by TVM for one prefill length, run from token ids.

    runner = ModelRunner(open_model("model.onnx", tokenizer="tokenizer.json"))
    forward = runner.compile(512, sat.pipeline(keep=0.2))
    logits = forward(ids)          # [512, vocab] float32

Used by evaluation, calibration and the demo; the builder exports through the same source.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._compat import relax, tvm
from ..tokenizer import check_token_ids
from .source import ModelSource, open_model


@dataclass
class ModelRunner:
    source: ModelSource
    _weights: dict = field(default_factory=dict, repr=False)  # (name, shape) -> device tensor, shared by lengths

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def tokenizer(self):
        return self.source.tokenizer

    @property
    def fingerprint(self) -> str:
        return self.source.fingerprint

    def compile(self, seq_len: int, relax_pipeline, target=None):
        """Compile for `seq_len` tokens; returns forward(ids [seq_len] int) -> logits [seq_len, vocab]."""
        exported = self.source.export(seq_len)
        if target is None:
            from ..targets import get

            target = get("host").cpu
        ex = tvm.compile(exported.mod, target=target, relax_pipeline=relax_pipeline)
        vm = relax.VirtualMachine(ex, tvm.cpu())
        arrays = None
        args = []
        for name, param in zip(exported.weight_names, exported.mod["main"].params[1:]):
            key = (name, tuple(int(d) for d in param.ty.shape.values))
            if key not in self._weights:
                arrays = arrays if arrays is not None else exported.weights()
                self._weights[key] = tvm.runtime.tensor(np.ascontiguousarray(arrays[name]))
            args.append(self._weights[key])
        return Forward(vm, args, exported.input_dtype, seq_len, int(exported.mod["main"].ret_ty.shape.values[-1]))


@dataclass
class Forward:
    """A compiled prefill: ``forward(ids [seq_len])`` -> logits [seq_len, vocab]."""

    vm: object = field(repr=False)
    weights: list = field(repr=False)
    input_dtype: str
    seq_len: int
    vocab: int

    def __call__(self, ids) -> np.ndarray:
        check_token_ids(ids, self.vocab)
        ids = np.asarray(ids).astype(self.input_dtype).reshape(1, self.seq_len)
        return self.vm["main"](tvm.runtime.tensor(ids), *self.weights).numpy()[0]


def runner_for(spec, tokenizer=None) -> ModelRunner:
    """`ModelRunner(open_model(spec, tokenizer))`."""
    return ModelRunner(open_model(spec, tokenizer))


__all__ = ["Forward", "ModelRunner", "runner_for"]
