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


def readable_model(path: str) -> None:
    """A model given as a file must exist and be non-empty (names like 'smollm2' pass through)."""
    if path.endswith((".gguf", ".onnx")):
        p = Path(path).expanduser()
        if not p.is_file():
            raise SystemExit(f"model file {path} does not exist: pass the path of a .gguf or .onnx file, or 'smollm2'")
        if p.stat().st_size == 0:
            raise SystemExit(f"model file {path} is empty: download or export it again")
