"""Device profiles: each SoC's CPU, GPU and NPU as TVM targets (data files in devices/).

    from shadowattn_tvm import targets
    device = targets.get("snapdragon-8gen3")     # or "host", or a path to your own profile JSON
    device.cpu, device.gpu, device.npu           # tvm.target.Target (None where the device has none)
"""
from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

from .profile import DeviceProfile, DeviceProfileError, load_file, parse

__all__ = ["DeviceProfile", "DeviceProfileError", "get", "known", "load_file", "parse"]

_DEVICES = resources.files(__name__) / "devices"


def known() -> list[str]:
    """Names of the profiles shipped with the package."""
    return sorted(p.name[: -len(".json")] for p in _DEVICES.iterdir() if p.name.endswith(".json"))


@functools.lru_cache(maxsize=None)
def _builtin(name: str) -> DeviceProfile:
    import json

    return parse(json.loads((_DEVICES / f"{name}.json").read_text()), source="builtin")


def get(device: "str | os.PathLike | DeviceProfile") -> DeviceProfile:
    """A profile by name (see `known()`), from a JSON file path, or passed through if already one."""
    if isinstance(device, DeviceProfile):
        return device
    text = os.fspath(device)
    if text in known():
        return _builtin(text)
    path = Path(text).expanduser()
    if text.endswith(".json") or os.sep in text or path.exists():
        if path.is_dir():
            raise DeviceProfileError(f"device profile file {path} is a directory: pass the profile JSON file itself")
        if not path.is_file():
            raise DeviceProfileError(f"device profile file {path} does not exist")
        return load_file(path)
    raise DeviceProfileError(f"unknown device {text!r}; known: {', '.join(known())} "
                             f"(or give the path of a device profile JSON file)")
