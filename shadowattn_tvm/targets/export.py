"""Write a compiled module as a shared library the profile's CPU can load (cross-compiling if needed)."""
from __future__ import annotations

import shutil
from pathlib import Path

from .._compat import tvm
from ..emulators.toolchain import ToolchainError, ensure_tools, tool_for_executable
from .profile import DeviceProfile


def fcompile(device: DeviceProfile, *, install: bool = True):
    """The `fcompile` for ``export_library``: TVM's host default, or the profile's cross compiler."""
    if device.cross_compiler is None:
        return None
    compiler = device.cross_compiler.split()[0]
    if shutil.which(compiler) is None:
        tool = tool_for_executable(compiler)
        if tool is None or not install:
            raise ToolchainError(f"cross compiler {compiler!r} of device {device.name!r} is not on PATH")
        ensure_tools([tool])
    return tvm.support.cc.cross_compiler(device.cross_compiler)


def export_library(executable, path: str | Path, device: DeviceProfile) -> Path:
    """``executable.export_library(path)`` for `device`'s CPU; returns the path."""
    path = Path(path)
    compile_fn = fcompile(device)
    if compile_fn is None:
        executable.export_library(str(path))
    else:
        executable.export_library(str(path), fcompile=compile_fn)
    return path


_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0xA4: "hexagon", 0x28: "arm", 0x03: "x86"}


def elf_machine(path: str | Path) -> str:
    """The architecture in an ELF file's header (e_machine), e.g. "aarch64"; ValueError if not ELF."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    order = "little" if header[5] == 1 else "big"
    machine = int.from_bytes(header[18:20], order)
    return _ELF_MACHINES.get(machine, f"elf-machine-{machine:#x}")
