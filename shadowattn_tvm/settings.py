"""Every environment variable shadowattn-tvm reads, declared once, typed, with its default.

Read a setting with ``settings.CACHE_DIR.get()``: values are looked up at call time, so tests can
``monkeypatch.setenv`` and a long-running process sees changes. Nothing else in the package calls
``os.environ`` for its own configuration (a child process's environment is built, not read, there).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class Setting(Generic[V]):
    """One environment variable: its name, how to parse it, its default and what it is for."""

    name: str
    parse: Callable[[str], V]
    default: Callable[[], V]
    doc: str

    def get(self) -> V:
        raw = os.environ.get(self.name)
        if raw is None or raw == "":
            return self.default()
        try:
            return self.parse(raw)
        except ValueError as err:
            raise ValueError(f"environment variable {self.name}={raw!r} is invalid: {err}") from None

    def is_set(self) -> bool:
        return bool(os.environ.get(self.name))


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 < port < 65536:
        raise ValueError("a TCP port is 1..65535")
    return port


CACHE_DIR: Setting[Path] = Setting(
    "SHADOWATTN_CACHE", _path, lambda: Path.home() / ".cache" / "shadowattn",
    "root of shadowattn's download and build caches (the emulated phone's sysroot lives under it)",
)
PHONE_STATE: Setting[Path] = Setting(
    "SHADOWATTN_PHONE_STATE", _path, lambda: CACHE_DIR.get() / "emulated-phone" / "state.json",
    "state file of the running emulated phone (PIDs, ports, key); `shadowattn emulated-phone stop` reads it",
)
TRACKER_HOST: Setting[str] = Setting(
    "TVM_TRACKER_HOST", str, lambda: "127.0.0.1",
    "RPC tracker host used when --rpc-tracker is not given (TVM's own convention)",
)
TRACKER_PORT: Setting[int] = Setting(
    "TVM_TRACKER_PORT", _port, lambda: 9190,
    "RPC tracker port used when --rpc-tracker is not given (TVM's own convention)",
)

ALL: tuple[Setting, ...] = (CACHE_DIR, PHONE_STATE, TRACKER_HOST, TRACKER_PORT)


def default_threads() -> None:
    """Default TVM_NUM_THREADS (TVM's own variable) to the logical CPU count.

    TVM's runtime otherwise starts one worker per physical core: 1 on a 2-vCPU SMT machine, which
    halves every parallel kernel. Called once when the package is imported, before TVM's thread
    pool exists; an explicit TVM_NUM_THREADS always wins.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


def cache_dir() -> Path:
    """The cache root (``SHADOWATTN_CACHE``, default ``~/.cache/shadowattn``); not created here."""
    return CACHE_DIR.get()


@contextlib.contextmanager
def cache_lock(name: str):
    """Hold the exclusive lock ``cache_dir()/locks/<name>.lock``: a first-use download or install
    runs once when several processes need it at the same time (two terminals, parallel test
    workers); the others wait, then find it done."""
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _torchless_pythonpath() -> str:
    """PYTHONPATH with a stub `torch` (under the cache root) whose import fails, first."""
    stub = cache_dir() / "no-torch" / "torch" / "__init__.py"
    if not stub.exists():  # written whole, then renamed: a concurrent first use never reads half a file
        stub.parent.mkdir(parents=True, exist_ok=True)
        part = stub.with_name(f"__init__.py.{os.getpid()}")
        part.write_text('raise ImportError("torch is hidden from this TVM helper process")\n')
        os.replace(part, stub)
    return os.pathsep.join(p for p in (str(stub.parent.parent), os.environ.get("PYTHONPATH", "")) if p)


def torchless_env() -> dict:
    """This process's environment for a helper process that only needs TVM (an RPC tracker or
    server, a MetaSchedule worker): its `import torch` fails, so tvm_ffi, which imports torch
    whenever it can, skips it: `import tvm` 5.5 -> 2.2 s here."""
    return {**os.environ, "PYTHONPATH": _torchless_pythonpath()}


@contextlib.contextmanager
def torchless_subprocesses():
    """Processes started in this block (they inherit os.environ) get `torchless_env`."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _torchless_pythonpath()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def describe() -> str:
    """One line per setting: name, current value, meaning (for --help epilogs and bug reports)."""
    return "\n".join(f"{s.name}={s.get()}  # {s.doc}" for s in ALL)
