"""`DeviceProfile`: one SoC's processors as TVM targets, parsed and validated from a JSON file.

File format (see devices/*.json):

    {"name": "snapdragon-8gen3",                 # [a-z0-9._-]+
     "cpu": {"kind": "llvm", "mtriple": ..., "mcpu": ..., "mattr": [...], "num-cores": 5 | "auto"},
     "gpu": {"tag": "qcom/adreno-opencl", "host": "cpu"} | null,
     "npu": {"tag": "qcom/hexagon-v75"} | null,
     "cross_compiler": "aarch64-linux-gnu-g++" | null,   # null: builds run on this machine
     "rpc_key": "snapdragon-8gen3",                      # default: the name
     "description": ..., "soc": ..., "parts": {"cpu": "Cortex-A720", ...}, "notes": ...}

A target entry is a TVM config dict (``"kind": ...``) or a TVM tag (``"tag": ...``) with optional
option overrides; ``"host": "cpu"`` makes the profile's CPU target its host.
"""
from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._compat import tvm


class DeviceProfileError(ValueError):
    """A device profile is unknown, unreadable or invalid."""


_KEYS = {"name", "description", "soc", "parts", "cpu", "gpu", "npu", "cross_compiler", "rpc_key", "notes"}
_REQUIRED = ("name", "cpu")
# Which TVM target kinds may fill each processor slot of a profile.
_SLOT_KINDS = {"cpu": {"llvm"}, "gpu": {"opencl", "vulkan"}, "npu": {"hexagon"}}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# Integer target options a profile may set: (least, greatest) allowed; every other one must be >= 1.
_INT_RANGE = {"opt-level": (0, 3), "vtcm-capacity": (0, None), "supported_subgroup_operations": (0, None),
              "driver_version": (0, None), "vulkan_api_version": (0, None), "max_spirv_version": (0, None)}
_INT_UNCHECKED = {"from_device", "target_device_type"}  # TVM's own bookkeeping


@dataclass(frozen=True)
class DeviceProfile:
    """The processors of one device. Equal when built from the same JSON (targets compare by spec)."""

    name: str
    cpu: Any = field(compare=False)  # tvm.target.Target
    gpu: Any = field(default=None, compare=False)
    npu: Any = field(default=None, compare=False)
    cross_compiler: str | None = None
    rpc_key: str = ""
    description: str = ""
    soc: str = ""
    parts: tuple = ()  # ((slot, human-readable part name), ...)
    source: str = "builtin"  # "builtin" or the file it came from
    spec: str = ""  # the canonical JSON it was parsed from

    @property
    def is_cross(self) -> bool:
        """True when its CPU code cannot run on this machine (needs the cross compiler and a device)."""
        return self.cross_compiler is not None

    def to_json(self) -> dict:
        """Resolved targets and metadata, for manifests and reports."""
        target = lambda t: None if t is None else json.loads(str(t))  # noqa: E731
        return {"name": self.name, "description": self.description, "soc": self.soc, "parts": dict(self.parts),
                "cpu": target(self.cpu), "gpu": target(self.gpu), "npu": target(self.npu),
                "cross_compiler": self.cross_compiler, "rpc_key": self.rpc_key, "source": self.source}


def _fail(source: str, where: str, message: str) -> DeviceProfileError:
    return DeviceProfileError(f"device profile {source}: {where}: {message}")


def _target(entry: Any, slot: str, source: str, cpu=None):
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise _fail(source, slot, f"expected an object with 'kind' or 'tag' (or null), got {type(entry).__name__}")
    entry = dict(entry)
    host = entry.pop("host", None)
    if entry.get("num-cores") == "auto":
        entry["num-cores"] = os.cpu_count() or 1
    if entry.get("mcpu") == "native":  # without an mcpu LLVM emits baseline x86-64 (SSE2) code
        entry["mcpu"] = str(tvm.target.codegen.llvm_get_system_cpu())
    if ("kind" in entry) == ("tag" in entry):
        raise _fail(source, slot, "give exactly one of 'kind' (a TVM target config) or 'tag' (a TVM target tag)")
    if host == "cpu":
        if cpu is None:
            raise _fail(source, slot, "'host': 'cpu' is only valid outside the cpu entry")
        host = cpu
    elif host is not None:
        host = _target(host, f"{slot}.host", source)
    try:
        if "tag" in entry:
            tag = entry.pop("tag")
            if tag not in tvm.target.tag.list_tags():
                raise ValueError(f"unknown TVM target tag {tag!r}")
            config = dict(tvm.target.Target(tag).export())
            config.update(entry)
            config.pop("tag", None)
            target = tvm.target.Target(config, host=host) if host is not None else tvm.target.Target(config)
        else:
            target = tvm.target.Target(entry, host=host) if host is not None else tvm.target.Target(entry)
    except (ValueError, TypeError, RuntimeError) as err:
        raise _fail(source, slot, str(err).strip().splitlines()[0]) from None
    _check_ints(entry, target.kind.name, slot, source)
    kinds = _SLOT_KINDS.get(slot.split(".")[0], None)
    if kinds is not None and "." not in slot and target.kind.name not in kinds:
        raise _fail(source, slot, f"target kind {target.kind.name!r} cannot be the {slot}; expected {sorted(kinds)}")
    _check_mcpu(target, slot, source)
    return target


def _check_ints(entry: dict, kind: str, slot: str, source: str) -> None:
    """TVM takes any int (and true/false) for an int option: refuse counts and sizes below their range."""
    types = tvm.target.TargetKind.options_from_name(kind)
    for key, value in entry.items():
        if types.get(key) != "int" or key in _INT_UNCHECKED:
            continue
        least, most = _INT_RANGE.get(key, (1, None))
        if isinstance(value, bool) or value < least or (most is not None and value > most):
            allowed = f"{least}..{most}" if most is not None else f">= {least}"
            auto = ' (or "auto" for this machine\'s count)' if key == "num-cores" else ""
            raise _fail(source, slot, f"{key!r} must be a whole number {allowed}{auto}, got {json.dumps(value)}")


def _check_mcpu(target, slot: str, source: str) -> None:
    """LLVM only warns about an unknown -mcpu and falls back to generic code: make it an error."""
    if target.kind.name != "llvm" or "mcpu" not in target.attrs:
        return
    mcpu = str(target.attrs["mcpu"])
    triple = str(target.attrs["mtriple"]) if "mtriple" in target.attrs else tvm.target.codegen.llvm_get_system_triple()
    if not tvm.target.codegen.llvm_is_valid_cpu(mcpu, triple):
        raise _fail(source, slot, f"LLVM {tvm.target.codegen.llvm_version_major()} does not know mcpu {mcpu!r} "
                                  f"for {triple}")


def _native_arch(triple: str) -> bool:
    arch = triple.split("-")[0]
    machine = platform.machine().lower()
    aliases = {"x86_64": {"x86_64", "amd64"}, "aarch64": {"aarch64", "arm64"}}
    return machine in aliases.get(arch, {arch})


def parse(data: Any, source: str = "builtin") -> DeviceProfile:
    """Validate a decoded profile JSON object and build its targets."""
    if not isinstance(data, dict):
        raise _fail(source, "top level", f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise _fail(source, "top level", f"unknown keys {unknown}; allowed: {sorted(_KEYS)}")
    for key in _REQUIRED:
        if key not in data:
            raise _fail(source, "top level", f"missing required key {key!r}")
    name = data["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(source, "name", f"expected a lowercase name matching {_NAME.pattern}, got {name!r}")
    for key in ("description", "soc", "rpc_key", "notes"):
        if key in data and not isinstance(data[key], str):
            raise _fail(source, key, f"expected a string, got {type(data[key]).__name__}")
    parts = data.get("parts", {})
    if not isinstance(parts, dict) or not all(isinstance(v, str) for v in parts.values()):
        raise _fail(source, "parts", "expected an object of strings")
    cross = data.get("cross_compiler")
    if cross is not None and (not isinstance(cross, str) or not cross.strip()):
        raise _fail(source, "cross_compiler", f"expected a compiler command or null, got {cross!r}")

    cpu = _target(data["cpu"], "cpu", source)
    if cpu is None:
        raise _fail(source, "cpu", "a profile needs a CPU target")
    triple = str(cpu.attrs["mtriple"]) if "mtriple" in cpu.attrs else None
    if triple is not None and not _native_arch(triple) and cross is None:
        raise _fail(source, "cross_compiler", f"the cpu target is for {triple}, not this machine: name the cross "
                                              f"compiler (e.g. \"aarch64-linux-gnu-g++\")")
    return DeviceProfile(
        name=name, cpu=cpu, gpu=_target(data.get("gpu"), "gpu", source, cpu),
        npu=_target(data.get("npu"), "npu", source, cpu), cross_compiler=cross,
        rpc_key=data.get("rpc_key") or name, description=data.get("description", ""), soc=data.get("soc", ""),
        parts=tuple(sorted(parts.items())), source=source, spec=json.dumps(data, sort_keys=True),
    )


def load_file(path: str | Path) -> DeviceProfile:
    """Read and validate a profile JSON file; DeviceProfileError says what is wrong and where."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as err:
        raise DeviceProfileError(f"cannot read device profile {path}: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DeviceProfileError(f"device profile {path}: invalid JSON at line {err.lineno} column {err.colno}: "
                                 f"{err.msg}") from None
    return parse(data, source=str(path))
