"""Calibration: per-head keep ratios and int8 scale statistics (the `SparsityProfile`)."""
from .profile import LayerProfile, ProfileError, SparsityProfile

__all__ = ["LayerProfile", "ProfileError", "SparsityProfile"]
