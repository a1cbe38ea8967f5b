"""Helper processes that only need TVM start without torch, and the caller's environment is restored."""
import os
import subprocess
import sys

import pytest

from shadowattn_tvm import settings

TORCH_MODULES = "import sys, tvm; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"


@pytest.mark.parametrize("pythonpath", [None, "/some/dir"])
def test_subprocesses_in_the_block_import_tvm_without_torch(monkeypatch, pythonpath):
    if pythonpath is None:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    else:
        monkeypatch.setenv("PYTHONPATH", pythonpath)
    with settings.torchless_subprocesses():
        assert os.environ["PYTHONPATH"].endswith(pythonpath or "no-torch")
        out = subprocess.run([sys.executable, "-c", TORCH_MODULES], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert os.environ.get("PYTHONPATH") == pythonpath
    # outside the block torch comes back (this environment has it installed)
    pytest.importorskip("torch")
    again = subprocess.run([sys.executable, "-c", TORCH_MODULES], capture_output=True, text=True, check=True)
    assert "'torch'" in again.stdout
