"""The shadowAttn Relax passes, one per file, and the pipeline composing them."""
from .detect_attention import DetectAttention
from .pipeline import UnsupportedAttentionError, pipeline
from .report import AttentionReport, Candidate
from .split_sparse_attention import SplitSparseAttention

__all__ = ["DetectAttention", "SplitSparseAttention", "pipeline", "AttentionReport", "Candidate",
           "UnsupportedAttentionError"]
