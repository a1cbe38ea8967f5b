"""A model's weights, read from its own file by a map: what the frontends load and deploy reloads.

    wmap = WeightMap.from_json(manifest.data["model"]["weights"])
    arrays = wmap.load()                      # input name -> numpy array, the file's sha256 checked

A build keeps its model's weights as inputs of ``main`` (the library stays small), so a deploy
must read them again. The frontend that exported the model writes down, per input, which tensor
of the model file holds it and whether it is stored transposed; a few inputs that exist in no
file (tables an ONNX import folds at the build's length) are kept in the build's ``weights/``.
Reading needs only numpy and the format's own package (`gguf`, `onnx`): no compiler module, so
`runtime.deploy` can use it on a machine that only runs builds.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("gguf", "onnx")


class WeightsError(ValueError):
    """The model file is missing, changed since the build, or lacks a tensor the map names."""


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorRef:
    """Where one input comes from: a tensor of the model file (optionally transposed, 2-D only)."""

    tensor: str
    transpose: bool = False


@dataclass(frozen=True)
class WeightMap:
    """Inputs of an exported model -> tensors of its model file (`format`, `path`, `sha256`)."""

    format: str
    path: str
    sha256: str
    tensors: dict = field(default_factory=dict)  # input name -> TensorRef
    derived: tuple = ()  # input names stored with the build, not in the file

    def __post_init__(self):
        if self.format not in FORMATS:
            raise WeightsError(f"unknown weight file format {self.format!r}; known: {', '.join(FORMATS)}")

    def to_json(self) -> dict:
        return {"format": self.format, "path": self.path, "sha256": self.sha256,
                "tensors": {k: [r.tensor, r.transpose] for k, r in self.tensors.items()},
                "derived": list(self.derived)}

    @classmethod
    def from_json(cls, data: dict) -> "WeightMap":
        try:
            return cls(str(data["format"]), str(data["path"]), str(data["sha256"]),
                       {k: TensorRef(str(v[0]), bool(v[1])) for k, v in data["tensors"].items()},
                       tuple(data.get("derived", ())))
        except (KeyError, TypeError, IndexError) as err:
            raise WeightsError(f"malformed weight map (missing or wrong field {err}): rebuild") from None

    def locate(self, path=None, check: bool = True) -> Path:
        """The model file (`path` overrides the recorded one), its sha256 checked against the map's."""
        file = Path(path if path is not None else self.path).expanduser()
        if not file.is_file():
            raise WeightsError(f"the model file {file} is gone: the build takes its weights from it; pass its "
                               "new location (deploy --model FILE) or rebuild")
        if check and file_sha256(file) != self.sha256:
            raise WeightsError(f"{file} is not the model file this was built from (sha256 differs): pass the "
                               "original file or rebuild with this one")
        return file

    def load(self, path=None, derived: dict | None = None, check: bool = True) -> dict:
        """Every input's array: the mapped tensors of the file, then `derived` (name -> array)."""
        file = self.locate(path, check)
        raw = _READERS[self.format](file, {r.tensor for r in self.tensors.values()})
        out = {}
        for name, ref in self.tensors.items():
            if ref.tensor not in raw:
                raise WeightsError(f"{file} has no tensor {ref.tensor!r} (for input {name}): not the file the "
                                   "map was made for")
            array = raw[ref.tensor]
            out[name] = np.ascontiguousarray(array.T) if ref.transpose else array
        missing = [n for n in self.derived if n not in (derived or {})]
        if missing:
            raise WeightsError(f"inputs {missing[:3]} are not in the model file and were not given: rebuild")
        out.update({n: derived[n] for n in self.derived})
        return out


def _read_gguf(path: Path, names: set) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        if t.name in names:
            shape = [int(x) for x in reversed(t.shape)]
            out[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
    return out


def _read_onnx(path: Path, names: set) -> dict:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in names}


_READERS = {"gguf": _read_gguf, "onnx": _read_onnx}


def read_tensors(fmt: str, path, names) -> dict:
    """Tensors `names` of a model file as numpy arrays (GGUF dequantised to float32)."""
    return _READERS[fmt](Path(path), set(names))


__all__ = ["FORMATS", "TensorRef", "WeightMap", "WeightsError", "file_sha256", "read_tensors"]
