"""Argument checks shared by the subcommands: each failure is one line naming the fix."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path


def positive(name: str, *values: int) -> None:
    """Counts and lengths (``--windows``, ``--ctx``) must be >= 1."""
    bad = [v for v in values if v < 1]
    if bad:
        raise SystemExit(f"{name} must be >= 1 (got {bad[0]})")


def non_negative(name: str, value: float) -> None:
    """Tolerances: a finite number >= 0."""
    if not (math.isfinite(value) and value >= 0):
        raise SystemExit(f"{name} must be a finite number >= 0 (got {value})")


def _inputs(inputs) -> list:
    """The inputs that are existing files or directories (MODEL may also be a name such as smollm2)."""
    return [Path(p).expanduser().resolve() for p in inputs if p is not None and Path(p).expanduser().exists()]


def _can_create_in(name: str, path, directory: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise SystemExit(f"{name} {path}: cannot write in {directory} ({err.strerror}): pass another path") from None


def writable_file(name: str, path: str | None, *inputs) -> None:
    """An output file must be writable before hours of work, not after, and must not be one of the
    command's `inputs` (model, text, profile, tokenizer files), which it would overwrite."""
    if path is None:
        return
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise SystemExit(f"{name} {path} is a directory: pass a file path")
    if not target.parent.is_dir():
        raise SystemExit(f"{name} {path}: directory {target.parent} does not exist: create it or pass another path")
    if target.resolve() in _inputs(inputs):
        raise SystemExit(f"{name} {path} is one of this command's input files, which it would overwrite: pass "
                         "another path")
    _can_create_in(name, path, target.parent)


def writable_dir(name: str, path: str | None, *inputs) -> None:
    """An output directory the command (re)creates: its parent must be writable, and no input file may
    live inside it (replacing the directory would delete it)."""
    if path is None:
        return
    target = Path(path).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise SystemExit(f"{name} {path} is a file: pass a directory path")
    if not target.parent.is_dir():
        raise SystemExit(f"{name} {path}: directory {target.parent} does not exist: create it or pass another path")
    for source in _inputs(inputs):
        if source == target.resolve() or target.resolve() in source.parents:
            raise SystemExit(f"{name} {path} contains the input {source}, which replacing the directory would "
                             "delete: move the input out or pass another directory")
    _can_create_in(name, path, target.parent)
