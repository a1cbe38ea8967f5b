"""The shadowAttn Relax passes, one per file, and the pipeline composing them."""
from .detect_attention import DetectAttention
from .pipeline import UnsupportedAttentionError, lowering, pipeline
from .schedule_default_cpu import ScheduleDefaultCPU
from .report import AttentionReport, Candidate
from .split_sparse_attention import SplitSparseAttention

__all__ = ["DetectAttention", "SplitSparseAttention", "pipeline", "AttentionReport", "Candidate",
           "UnsupportedAttentionError", "lowering", "ScheduleDefaultCPU"]
