"""shadowattn-tvm: shadowAttn dynamic sparse attention (Yin et al., arXiv 2508.16703) on Apache TVM.

    import tvm, shadowattn_tvm as sat
    ex = tvm.compile(mod, target="llvm", relax_pipeline=sat.pipeline(keep=0.2))
"""
from . import settings as _settings

_settings.default_threads()

from . import targets  # noqa: E402
from .block import AttentionBlock, CausalMode, KVMap, ScaleMode  # noqa: E402
from .calibrate import LayerProfile, ProfileError, SparsityProfile  # noqa: E402
from .npu.options import NPUOptions  # noqa: E402
from .passes import (AttentionReport, DetectAttention, SplitSparseAttention,  # noqa: E402
                     UnsupportedAttentionError, lowering, pipeline)

__version__ = "0.1.0"


def __getattr__(name):
    # `sat.frontend.from_onnx(...)`: imported on first use (it pulls in TVM's ONNX importer)
    if name == "frontend":
        import importlib

        return importlib.import_module(".frontend", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "targets", "frontend", "pipeline", "lowering", "DetectAttention", "SplitSparseAttention", "AttentionReport",
    "UnsupportedAttentionError", "NPUOptions",
    "SparsityProfile", "LayerProfile", "ProfileError", "AttentionBlock", "CausalMode", "KVMap", "ScaleMode",
]
