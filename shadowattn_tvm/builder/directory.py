"""Fill a build directory so readers see either the old build or the new one, never a mix.

A build is written into a temporary sibling directory, then swapped in: with Linux's
``renameat2(RENAME_EXCHANGE)`` the swap is one atomic step; elsewhere it is two renames (the path
is briefly absent, but never holds a mix). The old contents are deleted after the swap.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import shutil
import tempfile
from pathlib import Path

from .manifest import FILENAME

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class BuildDirError(RuntimeError):
    """The output path cannot be (re)used for a build."""


def check_replaceable(out: Path) -> None:
    """Refuse to replace anything that is not empty and not one of our builds (e.g. `-o ~`)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BuildDirError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / FILENAME).is_file():
        raise BuildDirError(f"refusing to replace {out}: it is not empty and has no {FILENAME} of a previous build")


def _exchange(a: Path, b: Path) -> bool:
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def swap_in(tmp: Path, out: Path) -> None:
    """Make `tmp` the contents of `out` (replacing it if it exists) and delete the old contents."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp)  # tmp now holds the old build
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    os.rename(out, old / "build")
    os.rename(tmp, out)
    shutil.rmtree(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Delete the staging directories of builds of `out` whose process is gone (a killed compile).

    Staging names carry the writer's pid (``.NAME.tmp-PID-XXXX``); a live writer's directory is
    kept. Names without a pid come from builds before pids were recorded and are stale too.
    """
    removed = []
    for kind in ("tmp", "old"):
        for path in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"):
            pid = path.name[len(f".{out.name}.{kind}-"):].split("-", 1)[0]
            if path.is_dir() and not path.is_symlink() and not (pid.isdigit() and _alive(int(pid))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


@contextlib.contextmanager
def staging(out: Path):
    """A temporary directory next to `out`, swapped into place if the block succeeds, else removed.

    Leftovers of killed builds of the same `out` are deleted first (`remove_stale`).
    """
    out = Path(out).expanduser().absolute()
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a build directory is an ordinary directory
        swap_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
