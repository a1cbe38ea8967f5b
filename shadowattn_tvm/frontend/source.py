"""One model interface for every command: `open_model("smollm2" | "model.gguf" | "model.onnx")`.

A `ModelSource` exports the model at a prefill length as plain Relax (nothing of the passes in):

    src = open_model("model.onnx", tokenizer="tokenizer.json")
    exp = src.export(512)       # exp.mod: main(input_ids [1, 512], *weights) -> logits [1, 512, V]
    exp.weights()               # weight name -> numpy array, in main's order after input_ids
    exp.weight_map              # which tensor of the model file feeds each weight (for deploy)
    src.tokenizer               # TextTokenizer: encode/decode, BOS/EOS, chat template

The builder (`shadowattn compile`, `tune`, `deploy`), the evaluator (`eval`, `demo`) and
calibration all take a source, so adding a format or an architecture touches one place:
`GGUFSource` (the `architectures` table, our `decoder` nn.Module), `ONNXSource` (`from_onnx`
after binding the export's auxiliary inputs), `RelaxSource` (any IRModule and its parameters).
"""
from __future__ import annotations

import abc
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .._compat import relax, tvm
from ..weights import TensorRef, WeightMap, file_sha256
from ..tokenizer import TextTokenizer, TokenizerError, from_file

#: names `open_model` knows besides paths; "default" is the attention block of `shadowattn demo block`
EMBEDDED = ("smollm2",)
EXTENSIONS = (".gguf", ".onnx")


class ModelError(ValueError):
    """A model argument that cannot be opened; the message names the fix."""


@dataclass
class Exported:
    """A model at one prefill length: ``main(input_ids, *weights) -> logits``."""

    mod: object  # tvm.IRModule
    weight_names: list
    weights: Callable[[], dict]  # name -> numpy array
    weight_map: WeightMap | None = None  # None: no file behind the weights (they go into the build)
    derived: dict = field(default_factory=dict)  # weights in no file (ONNX tables folded at this length)

    @property
    def input_dtype(self) -> str:
        return str(self.mod["main"].params[0].ty.dtype)


class ModelSource(abc.ABC):
    """What every command needs of a model; subclasses fill `export` and the tokenizer."""

    name: str = "model"
    path: Path | None = None
    max_len: int | None = None  # longest prefill the model supports (positions), when known

    def __init__(self, tokenizer=None):
        self._tokenizer_arg = tokenizer

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the model file (16 hex digits): profiles and builds record it."""
        return file_sha256(self.path)[:16] if self.path is not None else ""

    @functools.cached_property
    def tokenizer(self) -> TextTokenizer:
        if isinstance(self._tokenizer_arg, TextTokenizer):
            return self._tokenizer_arg
        if self._tokenizer_arg is not None:
            return from_file(self._tokenizer_arg)
        return self._own_tokenizer()

    def _own_tokenizer(self) -> TextTokenizer:
        raise TokenizerError(f"{self.name} carries no tokenizer: pass --tokenizer (a tokenizer.json, or a .gguf "
                             "file of the same model)")

    def check_length(self, seq_len: int) -> int:
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
            raise ModelError(f"the prefill length must be a positive integer, got {seq_len!r}")
        if self.max_len is not None and seq_len > self.max_len:
            raise ModelError(f"{seq_len} tokens exceed {self.name}'s context length ({self.max_len}): use at most "
                             f"{self.max_len}")
        return int(seq_len)

    @abc.abstractmethod
    def export(self, seq_len: int) -> Exported:
        """The model at `seq_len` tokens (see the module docstring)."""

    def describe(self) -> str:
        return self.name


def _as_main(mod, entry: str):
    """`mod` with function `entry` renamed to a public ``main``."""
    func = mod[entry]
    out = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv.name_hint != entry}, attrs=mod.attrs)
    out["main"] = func.with_attr("global_symbol", "main")
    return out


class GGUFSource(ModelSource):
    """A GGUF decoder of the `architectures` table, built as our `decoder` nn.Module."""

    def __init__(self, path, name: str | None = None, tokenizer=None):
        from .gguf_file import open_gguf

        super().__init__(tokenizer)
        self.file = open_gguf(path)
        self.path, self.config = self.file.path, self.file.config
        self.name = name or self.path.name
        self.max_len = self.config.context_length

    def _own_tokenizer(self) -> TextTokenizer:
        from ..tokenizer import from_gguf_fields

        return from_gguf_fields(self.file.get)

    @functools.cached_property
    def weight_map(self) -> WeightMap:
        return self.file.weight_map()

    @functools.lru_cache(maxsize=1)
    def weights(self) -> dict:
        """Every parameter of the decoder by name (read once; the sha256 was computed from this file)."""
        return self.weight_map.load(check=False)

    def parameter_names(self) -> list:
        """The decoder's parameters in the order every exported function takes them."""
        from .decoder import build_decoder

        return [name for name, _ in build_decoder(self.config).named_parameters()]

    def export(self, seq_len: int) -> Exported:
        from tvm.relax.frontend import nn

        from .decoder import build_decoder

        seq_len = self.check_length(seq_len)
        mod, named = build_decoder(self.config).export_tvm(
            spec={"forward": {"input_ids": nn.spec.Tensor([1, seq_len], "int32")}})
        names = [n for n, _ in named]
        return Exported(_as_main(mod, "forward"), names, lambda: {n: self.weights()[n] for n in names},
                        self.weight_map)

    def describe(self) -> str:
        c = self.config
        return (f"{self.name} ({c.arch.name}: {c.layers} layers, {c.heads} q heads, {c.kv_heads} kv heads, head_dim "
                f"{c.head_dim}{f', sliding window {c.sliding_window}' if c.sliding_window else ''})")


class ONNXSource(ModelSource):
    """An ONNX export (static or dynamic length) of a causal LM: input_ids -> logits."""

    def __init__(self, path, tokenizer=None, name: str | None = None):
        super().__init__(tokenizer)
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self.path}")
        self.name = name or self.path.name

    @functools.cached_property
    def proto(self):
        import onnx

        try:
            return onnx.load(str(self.path))
        except Exception as err:  # noqa: BLE001 - protobuf decode errors have many types
            raise ModelError(f"{self.path} is not a readable ONNX model ({type(err).__name__}): export it again") from None

    @functools.lru_cache(maxsize=4)  # an import of a large export takes a while; eval exports each length 6 times
    def export(self, seq_len: int) -> Exported:
        from .onnx import from_onnx
        from .onnx_inputs import prepare_causal_lm

        seq_len = self.check_length(seq_len)
        model = prepare_causal_lm(self.proto, seq_len)
        mod, params = from_onnx(model, seq_len=seq_len, batch_size=1)
        weight_map, derived = self._map(params)
        return Exported(mod, list(params), lambda: params, weight_map, derived)

    def _map(self, params: dict):
        """Which initializer of the file each parameter is (by name, else by content)."""
        from onnx import numpy_helper

        inits = {t.name: t for t in self.proto.graph.initializer}
        by_content: dict = {}
        tensors, derived = {}, {}
        for name, value in params.items():
            if name in inits and _same(numpy_helper.to_array(inits[name]), value):
                tensors[name] = TensorRef(name)
                continue
            if not by_content:
                for t in inits.values():
                    array = numpy_helper.to_array(t)
                    by_content.setdefault((array.shape, array.dtype.str, _digest(array)), t.name)
            found = by_content.get((value.shape, value.dtype.str, _digest(value)))
            if found is not None:
                tensors[name] = TensorRef(found)
            else:
                derived[name] = value
        weight_map = WeightMap("onnx", str(self.path.absolute()), file_sha256(self.path), tensors, tuple(derived))
        return weight_map, derived


def _digest(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


class RelaxSource(ModelSource):
    """Any Relax IRModule ``main(input_ids [1, n], *weights) -> logits [1, n, V]`` with its weights
    (n static, or symbolic and bound at export); in Python only."""

    def __init__(self, mod, params: dict, tokenizer=None, name: str = "relax-module"):
        super().__init__(tokenizer)
        self.mod, self.params, self.name = mod, dict(params), name
        main = mod["main"]
        if len(main.params) != 1 + len(self.params):
            raise ModelError(f"main takes {len(main.params)} inputs but {len(self.params)} weights were given: pass "
                             "main(input_ids, *weights) and the weights in its order")

    def export(self, seq_len: int) -> Exported:
        seq_len = self.check_length(seq_len)
        mod = self.mod
        length = mod["main"].params[0].ty.shape.values[1]
        if isinstance(length, tvm.tirx.Var):
            mod = relax.transform.BindSymbolicVars({length.name: seq_len})(mod)
        elif int(length) != seq_len:
            raise ModelError(f"{self.name} takes {int(length)} tokens, not {seq_len}")
        names = [p.name for p in mod["main"].params[1:]]
        return Exported(mod, names, lambda: dict(zip(names, self.params.values())), None, {})


def open_model(spec, tokenizer=None) -> ModelSource:
    """`smollm2` (the embedded default), a ``.gguf`` or an ``.onnx`` file; ModelError names the choices."""
    spec_text = str(spec)
    if spec_text in EMBEDDED:
        from .smollm2 import smollm2_gguf

        return GGUFSource(smollm2_gguf(), name="smollm2", tokenizer=tokenizer)
    if spec_text == "default":
        raise ModelError("'default' is the attention block of `shadowattn demo block`, not a language model: pass "
                         "smollm2, a .gguf or an .onnx file")
    path = Path(spec_text).expanduser()
    if path.suffix not in EXTENSIONS:
        raise ModelError(f"unknown model {spec_text!r}: pass {', '.join(EMBEDDED)}, a .gguf file or an .onnx file")
    if path.is_dir():
        raise ModelError(f"model file {spec_text} is a directory: pass the {path.suffix} file itself, not a directory")
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise ModelError(f"model file {spec_text} {what}: pass the path of a .gguf or .onnx file, or smollm2")
    if path.stat().st_size == 0:
        raise ModelError(f"model file {spec_text} is empty: download or export it again")
    if path.suffix == ".gguf":
        return GGUFSource(path, tokenizer=tokenizer)
    return ONNXSource(path, tokenizer=tokenizer)


__all__ = ["EMBEDDED", "Exported", "GGUFSource", "ModelError", "ModelSource", "ONNXSource", "RelaxSource",
           "open_model"]
