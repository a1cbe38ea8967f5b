"""Run a Hexagon graph library under qemu-hexagon: toolchain, C driver, job runner.

    lib = targets.hexagon.build_graph_library(graphs, "v75", out_dir)
    scores = run_graphs(lib, {key: {"q": q, "k": k}, ...})     # {key: int32 array}

What it needs, installed on first use (`ensure_toolchain`; `python -m
shadowattn_tvm.emulators.hexagon install` does it ahead of time):
  * Debian `qemu-user` (qemu-hexagon 7.2) and `lld` (the library's linker), via apt-get;
  * a Hexagon C library: PyPI `ziglang` (zig ships musl for hexagon-linux-musl), pip-installed
    into ``SHADOWATTN_CACHE/hexagon/ziglang-<version>`` (~340 MB), never into the environment;
  * `hexagon_driver.c` (package data), compiled statically once per source/zig version
    (the first compile builds zig's musl for Hexagon, ~2 min; cached in ``.../zig-cache``).

The driver maps the graph library itself (a static executable cannot dlopen), so the library's
ELF e_flags (0x73/0x75, newer than qemu 7.2's v67 model) never reach qemu: no patching. qemu runs
the driver as `-cpu v67`; every instruction the graphs use (scalar, HVX integer) exists there,
and one that did not would stop the run with SIGILL, not a wrong answer. HVX float would abort
qemu, which is one reason the build keeps quantization scalar. No timing signal comes from this.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .. import settings

ZIGLANG_VERSION = "0.15.2"  # 0.14.x has no musl for hexagon-linux-musl
QEMU_CPU = "v67"  # the newest Hexagon model qemu 7.2 knows
DRIVER_SOURCE = "hexagon_driver.c"
_DRIVER_FLAGS = ("-target", "hexagon-linux-musl", "-mcpu=hexagonv67", "-static", "-O2", "-Wall", "-Wextra")
_DLPACK_CODES = {"i": 0, "u": 1, "f": 2}


class EmulatorError(RuntimeError):
    """The Hexagon toolchain could not be set up, or a graph run failed under qemu."""


@dataclass(frozen=True)
class HexagonToolchain:
    qemu: str  # qemu-hexagon
    zig: Path  # the zig executable of the cached ziglang package
    cache: Path  # SHADOWATTN_CACHE/hexagon

    def env(self) -> dict:
        zig_cache = str(self.cache / "zig-cache")
        return {**os.environ, "ZIG_GLOBAL_CACHE_DIR": zig_cache, "ZIG_LOCAL_CACHE_DIR": zig_cache}


def _cache() -> Path:
    return settings.cache_dir() / "hexagon"


def _ensure_apt(log) -> str:
    wanted = {"qemu-hexagon": "qemu-user", "ld.lld": "lld"}
    missing = sorted({pkg for exe, pkg in wanted.items() if shutil.which(exe) is None})
    if missing:
        from .toolchain import ToolchainError, apt_install

        try:
            apt_install(missing, log=log)
        except ToolchainError as err:
            raise EmulatorError(str(err)) from None
    qemu = shutil.which("qemu-hexagon")
    if qemu is None or shutil.which("ld.lld") is None:
        raise EmulatorError("qemu-hexagon / ld.lld still missing after installing qemu-user and lld")
    return qemu


def _ensure_zig(cache: Path, log) -> Path:
    site = cache / f"ziglang-{ZIGLANG_VERSION}"
    zig = site / "ziglang" / "zig"
    if zig.exists():
        return zig
    log(f"[hexagon] pip install ziglang=={ZIGLANG_VERSION} into {site} (~340 MB, once)")
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="ziglang-", dir=cache))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(staging), f"ziglang=={ZIGLANG_VERSION}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not (staging / "ziglang" / "zig").exists():
        shutil.rmtree(staging, ignore_errors=True)
        raise EmulatorError(f"`{' '.join(cmd)}` failed: {result.stderr.strip()[-1500:]}")
    try:
        staging.rename(site)  # atomic: a concurrent install never sees half a package
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process won the race
    return zig


def ensure_toolchain(*, log=print) -> HexagonToolchain:
    """qemu-hexagon, ld.lld and zig, installing what is missing (apt needs root on Debian)."""
    cache = _cache()
    qemu = _ensure_apt(log)
    return HexagonToolchain(qemu=qemu, zig=_ensure_zig(cache, log), cache=cache)


def _ffi_include() -> str:
    import tvm_ffi.libinfo

    return str(tvm_ffi.libinfo.find_include_path())


def build_driver(toolchain: HexagonToolchain, *, log=print) -> Path:
    """The static Hexagon driver executable, compiled once per source, flags and zig version."""
    source = (resources.files(__package__) / DRIVER_SOURCE).read_bytes()
    include = _ffi_include()
    key = hashlib.sha256(b"\0".join([source, " ".join(_DRIVER_FLAGS).encode(), ZIGLANG_VERSION.encode(),
                                     (Path(include) / "tvm/ffi/c_api.h").read_bytes()])).hexdigest()[:16]
    exe = toolchain.cache / "driver" / f"hexagon_driver-{key}"
    if exe.exists():
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    log("[hexagon] compiling the qemu driver (the first zig build for Hexagon takes ~2 min)")
    with tempfile.TemporaryDirectory(dir=exe.parent) as tmp:
        src = Path(tmp) / DRIVER_SOURCE
        src.write_bytes(source)
        out = Path(tmp) / "driver"
        cmd = [str(toolchain.zig), "cc", *_DRIVER_FLAGS, "-I", include, str(src), "-o", str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True, env=toolchain.env())
        if result.returncode != 0:
            raise EmulatorError(f"driver compile failed: {(result.stderr or result.stdout).strip()[-2000:]}")
        out.replace(exe)
    return exe


def _dlpack(dtype: np.dtype) -> tuple[int, int]:
    if dtype.kind not in _DLPACK_CODES:
        raise ValueError(f"dtype {dtype} has no DLPack code here")
    return _DLPACK_CODES[dtype.kind], dtype.itemsize * 8


def _tensor_line(io: str, dtype: np.dtype, shape, path: Path) -> str:
    code, bits = _dlpack(dtype)
    return f"tensor {io} {code} {bits} {len(shape)} {' '.join(str(int(d)) for d in shape)} {path}"


def call_lines(entry, inputs: dict, tmp: Path, tag) -> tuple[list, list]:
    """(job lines, [(path, dtype, shape)] of the outputs) of one call of graph `entry`; the inputs
    are checked against its manifest shapes and written to files in `tmp` named after `tag`."""
    lines, outs = [f"call {entry.symbol} {len(entry.inputs) + len(entry.outputs)}"], []
    for info in entry.inputs:
        if info.name not in inputs:
            raise ValueError(f"{entry.key}: input {info.name!r} missing")
        array = np.ascontiguousarray(inputs[info.name], dtype=info.dtype)
        if array.shape != tuple(info.shape):
            raise ValueError(f"{entry.key}: input {info.name} has shape {array.shape}, the graph takes {info.shape}")
        path = tmp / f"{tag}_{info.name}.bin"
        array.tofile(path)
        lines.append(_tensor_line("in", array.dtype, info.shape, path))
    for info in entry.outputs:
        path = tmp / f"{tag}_{info.name}.out"
        lines.append(_tensor_line("out", np.dtype(info.dtype), info.shape, path))
        outs.append((path, np.dtype(info.dtype), tuple(info.shape)))
    return lines, outs


def read_outputs(outs) -> list:
    return [np.fromfile(p, dtype=d).reshape(s) for p, d, s in outs]


def run_calls(library, calls, *, toolchain: HexagonToolchain | None = None, timeout: float = 900,
              log=print) -> list:
    """Run graph calls [(key, {"q": array, "k": array}), ...] of `library` (a GraphLibrary or its
    directory) in one qemu-hexagon process; returns each call's outputs (a list of arrays)."""
    from ..targets.hexagon.library import GraphLibrary, load_graph_library

    lib = library if isinstance(library, GraphLibrary) else load_graph_library(library)
    toolchain = toolchain or ensure_toolchain(log=log)
    driver = build_driver(toolchain, log=log)
    with tempfile.TemporaryDirectory(prefix="hexagon-run-") as tmp:
        tmp = Path(tmp)
        lines, outputs = [], []
        for n, (key, inputs) in enumerate(calls):
            entry = lib.graphs.get(key)
            if entry is None:
                raise KeyError(f"graph {key!r} is not in {lib.manifest_path}")
            call, outs = call_lines(entry, inputs, tmp, n)
            lines += call
            outputs.append(outs)
        job = tmp / "job.txt"
        job.write_text("\n".join(lines) + "\n")
        cmd = [toolchain.qemu, "-cpu", QEMU_CPU, str(driver), str(lib.library_path), str(job)]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EmulatorError(f"qemu-hexagon did not finish {len(outputs)} call(s) in {timeout} s") from None
        if result.returncode != 0:
            raise EmulatorError(f"qemu-hexagon exited with {result.returncode} running {lib.library_path.name}: "
                                f"{(result.stderr or result.stdout).strip()[-2000:]}")
        return [read_outputs(outs) for outs in outputs]


def run_graphs(library, inputs, **kwargs) -> dict:
    """{key: scores} for {key: {"q": array, "k": array}}: one call per graph, one qemu process."""
    keys = list(inputs)
    results = run_calls(library, [(key, inputs[key]) for key in keys], **kwargs)
    return {key: outs[0] for key, outs in zip(keys, results)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shadowattn_tvm.emulators.hexagon",
                                     description="Set up or use the Hexagon emulation toolchain.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install qemu-user, lld and ziglang; compile the driver")
    args = parser.parse_args(argv)
    if args.command == "install":
        toolchain = ensure_toolchain()
        print(f"qemu: {toolchain.qemu}\nzig: {toolchain.zig}\ndriver: {build_driver(toolchain)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
