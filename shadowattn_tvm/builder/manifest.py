"""`manifest.json` of a build directory: what was built, for which device, from what, with checksums.

`load(dir)` verifies every listed file's sha256, so a deploy never runs a half-copied or edited build.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


FORMAT = 1
FILENAME = "manifest.json"
#: weights of the model that are in no model file (an ONNX import's folded tables), kept in the build
DERIVED_WEIGHTS = "weights/derived.npz"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict) -> "TensorSpec":
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]))


class ManifestError(ValueError):
    """A build directory has no valid manifest, or its files do not match it."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """One file a writer produced, relative to the build directory."""

    path: str
    kind: str  # "cpu-module", "report", "opencl-source" (+ its "opencl-kernels" table), later "npu-graph"
    lane: str | None = None  # the device processor it runs on ("cpu", "gpu", "npu"); its target is in "device"

    def describe(self, root: Path) -> dict:
        file = root / self.path
        return {"kind": self.kind, "lane": self.lane, "bytes": file.stat().st_size, "sha256": sha256(file)}


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict

    @property
    def device(self) -> dict:
        return self.data["device"]

    @property
    def rpc_key(self) -> str:
        return self.device.get("rpc_key") or self.device["name"]

    @property
    def inputs(self) -> tuple:
        return tuple(TensorSpec.from_json(x) for x in self.data["inputs"])

    @property
    def outputs(self) -> tuple:
        return tuple(TensorSpec.from_json(x) for x in self.data["outputs"])

    def file_of_kind(self, kind: str) -> Path:
        names = [name for name, info in self.data["files"].items() if info["kind"] == kind]
        if len(names) != 1:
            raise ManifestError(f"{self.root / FILENAME}: expected one {kind} file, found {names}")
        return self.root / names[0]


def write(root: Path, data: dict, artifacts) -> dict:
    """Add the file table (sizes, sha256) to `data` and write ``root/manifest.json``."""
    data = {"format": FORMAT, **data, "files": {a.path: a.describe(root) for a in artifacts}}
    (root / FILENAME).write_text(json.dumps(data, indent=1) + "\n")
    return data


def load(root: str | Path, *, verify: bool = True) -> Manifest:
    root = Path(root)
    path = root / FILENAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{root} is not a shadowattn build: no {FILENAME} "
                            "(run `shadowattn compile` first)") from None
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path} is unreadable: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a format-{FORMAT} shadowattn manifest; rebuild with `shadowattn compile`")
    for key in ("device", "model", "pipeline", "inputs", "outputs", "files"):
        if key not in data:
            raise ManifestError(f"{path}: missing {key!r}; rebuild with `shadowattn compile`")
    if verify:
        for name, info in data["files"].items():
            file = root / name
            if not file.is_file():
                raise ManifestError(f"{root}: {name} is listed in the manifest but missing")
            if sha256(file) != info["sha256"]:
                raise ManifestError(f"{root}: {name} does not match its sha256 in the manifest (modified or "
                                    f"partly copied); rebuild with `shadowattn compile`")
    return Manifest(root, data)
