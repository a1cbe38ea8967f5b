"""The shadowAttn Relax passes, one per file, and the pipeline composing them."""
from .apply_tuning_database import ApplyTuningDatabase
from .bucket_pilot import BucketPilot
from .detect_attention import DetectAttention
from .pipeline_heads import PipelineHeads
from .lowering import lowering
from .pipeline import UnsupportedAttentionError, pipeline
from .schedule_default_cpu import ScheduleDefaultCPU
from ..report import AttentionReport, Candidate
from .split_sparse_attention import SplitSparseAttention
from .use_tunable_kernels import UseTunableKernels

__all__ = ["BucketPilot", "PipelineHeads", "DetectAttention", "SplitSparseAttention", "pipeline", "AttentionReport", "Candidate",
           "UnsupportedAttentionError", "lowering", "ScheduleDefaultCPU", "ApplyTuningDatabase", "UseTunableKernels"]
