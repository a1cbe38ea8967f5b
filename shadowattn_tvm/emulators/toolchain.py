"""Host tools the phone lanes need (cross compiler, qemu-user), installed from Debian on demand.

`ensure_tools(("aarch64-gxx", "qemu-aarch64"))` checks PATH and, when something is missing and we
are root on a Debian machine, runs ``apt-get update`` once and installs the packages; otherwise it
raises `ToolchainError` naming the command the user should run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from ..settings import cache_lock


class ToolchainError(RuntimeError):
    """A required host tool is missing and could not be installed."""


@dataclass(frozen=True)
class Tool:
    executable: str  # what must be on PATH
    apt_package: str  # the Debian package that provides it


TOOLS: dict[str, Tool] = {
    "aarch64-gxx": Tool("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
    "qemu-aarch64": Tool("qemu-aarch64", "qemu-user"),
}

_APT_UPDATED = False


def missing(names) -> list[Tool]:
    return [TOOLS[n] for n in names if shutil.which(TOOLS[n].executable) is None]


def tool_for_executable(executable: str) -> str | None:
    """The name (key of TOOLS) of the tool providing `executable`, e.g. a profile's cross compiler."""
    return next((name for name, t in TOOLS.items() if t.executable == executable), None)


def _can_apt() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(packages, *, log=print) -> None:
    """``apt-get update`` (once per process) then ``apt-get install -y PACKAGES``; ToolchainError on failure."""
    global _APT_UPDATED
    packages = sorted(set(packages))
    if not _can_apt():
        raise ToolchainError(f"missing Debian packages {' '.join(packages)}: "
                             f"run `sudo apt-get update && sudo apt-get install -y {' '.join(packages)}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]  # other engineers/CI steps may hold the dpkg lock
    steps = ([] if _APT_UPDATED else [["apt-get", *lock, "update", "-qq"]]) + [
        ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *packages]]
    for cmd in steps:
        log(f"[toolchain] {' '.join(cmd)}")
        with cache_lock("apt"):  # apt-get update takes its lists lock without waiting
            result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise ToolchainError(f"`{' '.join(cmd)}` failed: {' | '.join(tail)}")
        if cmd[-2:] == ["update", "-qq"]:
            _APT_UPDATED = True


def ensure_tools(names, *, log=print) -> None:
    """Make every tool in `names` (keys of TOOLS) available on PATH, installing with apt if needed."""
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise ValueError(f"unknown tools {unknown}; known: {sorted(TOOLS)}")
    absent = missing(names)
    if absent:
        apt_install([t.apt_package for t in absent], log=log)
        still = missing(names)
        if still:
            raise ToolchainError(f"installed {[t.apt_package for t in absent]} but "
                                 f"{[t.executable for t in still]} is still not on PATH")
