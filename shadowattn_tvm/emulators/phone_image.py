"""The emulated phone's userland: an aarch64 Python with a runtime-only TVM, cached on disk.

Layout under ``$SHADOWATTN_CACHE/emulated-phone/`` (built once, reused while the fingerprint holds):

  apt/       a private apt state for arm64 (the host's dpkg is never told about arm64)
  debs/      Debian arm64 packages (``apt-get download``), unpacked with ``dpkg -x`` into sysroot/
  wheels/    aarch64 wheels from PyPI (``pip download --platform ...``), unzipped into site/
  bin/python launcher: ``qemu-aarch64 -L sysroot sysroot/usr/bin/python3.11 "$@"``
  ready.json the fingerprint of a complete image

Why each odd step (see ../shared/notes/EMULATED_TARGETS.md):
- binfmt_misc is unusable in the sandboxes, so aarch64 programs run as ``qemu-aarch64 -L SYSROOT``.
- TVM's RPC server re-launches ``sys.executable``; site/sitecustomize.py points it at the launcher,
  otherwise the child exec fails with "Exec format error".
- ``libtvm_compiler.so`` is dropped and ``TVM_USE_RUNTIME_LIB=1`` set: the phone only runs modules.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from .toolchain import ensure_tools

FORMAT = 1
PYTHON = "3.11"  # Debian bookworm's python3.11, the interpreter of the sysroot

DEBIAN_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libstdc++6",
    "libgcc-s1", "libbz2-1.0", "libcrypt1", "libexpat1", "libffi8", "liblzma5", "libncursesw6",
    "libreadline8", "libsqlite3-0", "libssl3", "libtinfo6", "libuuid1", "zlib1g", "libnsl2",
    "libtirpc3", "libdb5.3", "libzstd1",
)

# Pinned to what the host runs where we can (same TVM and FFI ABI on both ends of the RPC link);
# apache-tvm-ffi 0.1.15.x is avoided for the reason given in pyproject.toml.
_PINNED_TO_HOST = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "cloudpickle", "psutil",
                   "typing_extensions")
_FALLBACK = {"apache-tvm": "0.27.0.post1", "apache-tvm-ffi": "0.1.14.post1"}
_DROP_FROM_SITE = ("libtvm_compiler.so", "libtvm_runtime_cuda.so")
_PLATFORMS = ("manylinux_2_17_aarch64", "manylinux2014_aarch64", "manylinux_2_24_aarch64",
              "manylinux_2_27_aarch64", "manylinux_2_28_aarch64")

_SITECUSTOMIZE = '''\
"""Written by shadowattn_tvm.emulators.phone_image: children of this interpreter re-exec the launcher."""
import sys
sys.executable = {launcher!r}
'''


class PhoneImageError(RuntimeError):
    """The emulated phone's userland could not be prepared."""


@dataclass(frozen=True)
class PhoneImage:
    root: Path

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def launcher(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def ready_file(self) -> Path:
        return self.root / "ready.json"

    def env(self, base: dict | None = None) -> dict:
        """Environment for processes run through the launcher."""
        env = dict(os.environ if base is None else base)
        for name in ("PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE"):
            env.pop(name, None)  # bytecode is written into the cache: qemu recompiling it each start is slow
        env.update(PYTHONPATH=str(self.site), PYTHONNOUSERSITE="1", TVM_USE_RUNTIME_LIB="1")
        return env

    def is_ready(self) -> bool:
        try:
            return json.loads(self.ready_file.read_text()).get("fingerprint") == fingerprint()
        except (OSError, ValueError):
            return False


def default_image() -> PhoneImage:
    return PhoneImage(settings.CACHE_DIR.get() / "emulated-phone")


def wheel_pins() -> dict[str, str]:
    pins = {}
    for name in _PINNED_TO_HOST:
        try:
            pins[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name in _FALLBACK:
                pins[name] = _FALLBACK[name]
    return pins


def fingerprint() -> str:
    spec = {"format": FORMAT, "python": PYTHON, "debs": DEBIAN_PACKAGES, "wheels": wheel_pins()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _run(cmd, log, **kw):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
        raise PhoneImageError(f"`{' '.join(map(str, cmd[:4]))} ...` failed: {tail}")
    return result


def _apt_options(apt: Path) -> list[str]:
    return ["-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}",
            "-o", f"Dir::State::status={apt / 'status'}", "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={apt / 'sources'}", "-o", "APT::Architecture=arm64",
            "-o", "APT::Architectures::=arm64", "-o", "APT::Sandbox::User=root", "-o", "Debug::NoLocking=1"]


def _download_debs(image: PhoneImage, log) -> list[Path]:
    apt, debs = image.root / "apt", image.root / "debs"
    for sub in ("lists/partial", "cache/archives/partial", "sources"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    debs.mkdir(parents=True, exist_ok=True)
    (apt / "status").touch()
    have = {p.name.split("_")[0] for p in debs.glob("*.deb")}
    todo = [p for p in DEBIAN_PACKAGES if p not in have]
    if todo:
        sources = sorted(Path("/etc/apt/sources.list.d").glob("debian*.sources"))
        if not sources:
            raise PhoneImageError("no Debian apt source in /etc/apt/sources.list.d (needed for arm64 packages)")
        for src in sources:
            shutil.copy(src, apt / "sources" / src.name)
        log(f"[phone] apt-get update (arm64, private state in {apt})")
        _run(["apt-get", *_apt_options(apt), "update", "-qq"], log)
        log(f"[phone] apt-get download {len(todo)} arm64 packages")
        _run(["apt-get", *_apt_options(apt), "download", *(f"{p}:arm64" for p in todo)], log, cwd=debs)
    return sorted(debs.glob("*.deb"))


def _wheel_key(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return name.lower(), version


def _download_wheels(image: PhoneImage, log) -> list[Path]:
    wheels = image.root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = wheel_pins()
    wanted = {(n.replace("-", "_").lower(), v) for n, v in pins.items()}

    def found():
        return {_wheel_key(w): w for w in wheels.glob("*.whl") if _wheel_key(w) in wanted}

    if len(found()) < len(wanted):
        want = [f"{name}=={version}" for name, version in pins.items()]
        log(f"[phone] pip download (aarch64, cp311): {' '.join(want)}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "--python-version", PYTHON, "--implementation", "cp", "-d", wheels]
        for platform in _PLATFORMS:
            cmd += ["--platform", platform]
        _run(cmd + want, log)
    have = found()
    if len(have) < len(wanted):
        raise PhoneImageError(f"no aarch64 cp311 wheels for {sorted(wanted - set(have))}")
    return sorted(have.values())


def _unpack(image: PhoneImage, debs: list[Path], wheels: list[Path], log) -> None:
    staging = image.root / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "sysroot").mkdir(parents=True)
    log(f"[phone] unpacking {len(debs)} debs and {len(wheels)} wheels")
    for deb in debs:
        _run(["dpkg", "-x", deb, staging / "sysroot"], log)
    site = staging / "site"
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    for lib in _DROP_FROM_SITE:
        for path in site.rglob(lib):
            path.unlink()
    for path in site.rglob("*"):  # zipfile drops the executable bits shared libraries need
        if path.suffix == ".so" or ".so." in path.name:
            path.chmod(0o755)
    for name in ("sysroot", "site"):
        shutil.rmtree(image.root / name, ignore_errors=True)
        (staging / name).rename(image.root / name)
    staging.rmdir()


def _write_if_changed(path: Path, text: str, mode: int = 0o644) -> None:
    """Leave identical files alone: a running server may be reading them."""
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.replace(path)


def _write_launcher(image: PhoneImage) -> None:
    qemu = shutil.which("qemu-aarch64")
    _write_if_changed(image.launcher,
                      "#!/bin/sh\n# aarch64 python under qemu-user (written by shadowattn_tvm.emulators.phone_image)\n"
                      f'exec "{qemu}" -L "{image.sysroot}" "{image.sysroot}/usr/bin/python{PYTHON}" "$@"\n', 0o755)
    _write_if_changed(image.site / "sitecustomize.py", _SITECUSTOMIZE.format(launcher=str(image.launcher)))


def prepare(image: PhoneImage | None = None, *, force: bool = False, log=print) -> PhoneImage:
    """Build (or reuse) the emulated phone's userland; returns the ready image."""
    image = image or default_image()
    ensure_tools(("qemu-aarch64",), log=log)
    with settings.cache_lock("phone-image"):  # two preparers (a user's setup, a test run) must not interleave
        image.root.mkdir(parents=True, exist_ok=True)
        if image.is_ready() and not force:
            _write_launcher(image)  # cheap, and follows qemu if it moved
            return image
        return _build(image, log)


def _build(image: PhoneImage, log) -> PhoneImage:
    start = time.perf_counter()
    image.ready_file.unlink(missing_ok=True)
    debs = _download_debs(image, log)
    wheels = _download_wheels(image, log)
    _unpack(image, debs, wheels, log)
    _write_launcher(image)
    log("[phone] warming the bytecode cache (first aarch64 `import tvm`, under qemu)")
    _run([image.launcher, "-c", "import tvm, tvm.rpc, numpy; print(tvm.__version__)"], log, env=image.env(),
         timeout=900)
    image.ready_file.write_text(json.dumps({"fingerprint": fingerprint(), "wheels": wheel_pins(),
                                            "seconds": round(time.perf_counter() - start, 1)}, indent=1))
    log(f"[phone] image ready in {time.perf_counter() - start:.0f} s: {image.root}")
    return image
