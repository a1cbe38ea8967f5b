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
    """Ratios clip(lam * share, floor, 1) with lam chosen by bisection so the mean is `keep`."""
    shares = np.asarray(shares, float)
    if not 0 < keep <= 1:
        raise ValueError(f"keep={keep} is outside (0, 1]")
    floor = min(floor, keep)
    shares = np.maximum(shares, EPS)

    def mean(lam):
        return np.clip(lam * shares, floor, 1.0).mean()

    lo, hi = 0.0, 1.0 / shares.min()  # mean(lo) = floor <= keep <= 1 = mean(hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean(mid) < keep else (lo, mid)
    return np.clip(hi * shares, floor, 1.0)
