"""Argument checks shared by the subcommands: each failure is one line naming the fix."""
from __future__ import annotations

from pathlib import Path


def positive(name: str, *values: int) -> None:
    """Counts and lengths (``--windows``, ``--ctx``) must be >= 1."""
    bad = [v for v in values if v < 1]
    if bad:
        raise SystemExit(f"{name} must be >= 1 (got {bad[0]})")


def writable_file(name: str, path: str | None) -> None:
    """An output file's directory must exist before hours of work, not after."""
    if path is None:
        return
    parent = Path(path).expanduser().absolute().parent
    if Path(path).is_dir():
        raise SystemExit(f"{name} {path} is a directory: pass a file path")
    if not parent.is_dir():
        raise SystemExit(f"{name} {path}: directory {parent} does not exist: create it or pass another path")
