"""shadowattn-tvm: shadowAttn dynamic sparse attention (Yin et al., arXiv 2508.16703) on Apache TVM.

    import tvm, shadowattn_tvm as sat
    ex = tvm.compile(mod, target="llvm", relax_pipeline=sat.pipeline(keep=0.2))
"""
from .block import AttentionBlock, CausalMode, KVMap, ScaleMode
from .calibrate import LayerProfile, ProfileError, SparsityProfile
from .passes import (AttentionReport, DetectAttention, SplitSparseAttention, UnsupportedAttentionError,
                     lowering, pipeline)

__version__ = "0.1.0"

__all__ = [
    "pipeline", "lowering", "DetectAttention", "SplitSparseAttention", "AttentionReport", "UnsupportedAttentionError",
    "SparsityProfile", "LayerProfile", "ProfileError", "AttentionBlock", "CausalMode", "KVMap", "ScaleMode",
]
