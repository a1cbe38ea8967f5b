"""Per-head keep ratios from head and layer importance (the paper's calibration rule).

headImp = loss(head zeroed) - loss and layerImp = loss(layer zeroed) - loss. A head's share
is clamp(headImp) * clamp(layerImp): negatives become a small epsilon, large values are capped
at a percentile so one dominant head cannot take the whole budget. Ratios are
keep * N * share / sum(share), then water-filled into [floor, 1] keeping the mean at `keep`.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-6


def head_shares(head_imp, layer_imp, cap_percentile: float = 95.0) -> np.ndarray:
    head_imp, layer_imp = np.asarray(head_imp, float), np.asarray(layer_imp, float)
    share = np.maximum(head_imp, EPS) * np.maximum(layer_imp, EPS)[:, None]
    return np.minimum(share, np.percentile(share, cap_percentile))


def allocate_ratios(shares, keep: float, floor: float = 0.02) -> np.ndarray:
    """Ratios proportional to `shares`, each in [floor, 1], with mean exactly `keep`."""
    shares = np.asarray(shares, float)
    if not 0 < keep <= 1:
        raise ValueError(f"keep={keep} is outside (0, 1]")
    floor = min(floor, keep)
    n = shares.size
    ratios = np.full(shares.shape, np.nan)
    free = np.ones(shares.shape, bool)
    for _ in range(2 * n + 2):
        budget = keep * n - np.nansum(np.where(free, 0.0, ratios))
        s = np.where(free, shares, 0.0)
        trial = np.where(free, budget * s / s.sum() if s.sum() > 0 else budget / free.sum(), ratios)
        over, under = free & (trial > 1.0), free & (trial < floor)
        if not over.any() and not under.any():
            return np.where(free, trial, ratios)
        ratios[over], ratios[under] = 1.0, floor
        free &= ~(over | under)
        if not free.any():
            break
    return np.where(np.isnan(ratios), keep, ratios)
