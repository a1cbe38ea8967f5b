"""ONNX fixtures (tiny random-weight transformers models, exported once per cache key by
scripts/make_onnx_fixtures.py) shared by the frontend tests."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fixture_script():
    """scripts/make_onnx_fixtures.py as a module (scripts/ is not a package)."""
    name = "make_onnx_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def onnx_fixtures():
    pytest.importorskip("torch", reason="ONNX fixtures are exported from PyTorch (pip install -e '.[test]')")
    pytest.importorskip("transformers", reason="ONNX fixtures are Hugging Face models (pip install -e '.[test]')")
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    return fixture_script().make_fixtures()
