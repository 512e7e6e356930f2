"""Pareto fronts and 2-D hypervolume for (accuracy up, energy down)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pareto_mask(accuracy: Sequence[float], energy: Sequence[float]) -> np.ndarray:
    """``True`` for points no other point dominates (higher-or-equal accuracy at lower-or-equal energy,
    strictly better in one)."""
    acc, en = np.asarray(accuracy, dtype=float), np.asarray(energy, dtype=float)
    n = len(acc)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        dominated = (acc >= acc[i]) & (en <= en[i]) & ((acc > acc[i]) | (en < en[i]))
        mask[i] = not dominated.any()
    return mask


def hypervolume_2d(
    accuracy: Sequence[float], energy: Sequence[float], ref_accuracy: float, ref_energy: float
) -> float:
    """Area dominated by the points and bounded by the reference point (accuracy max, energy min).

    Points with accuracy <= ``ref_accuracy`` or energy >= ``ref_energy`` add nothing.
    """
    pts = [
        (float(a), float(e))
        for a, e in zip(accuracy, energy, strict=True)
        if a > ref_accuracy and e < ref_energy
    ]
    if not pts:
        return 0.0
    # Integrate the staircase: at energy x the front reaches the best accuracy of points with e <= x.
    pts.sort(key=lambda p: p[1])
    area, best = 0.0, ref_accuracy
    for k, (a, e) in enumerate(pts):
        best = max(best, a)
        e_next = pts[k + 1][1] if k + 1 < len(pts) else ref_energy
        area += (best - ref_accuracy) * (e_next - e)
    return area
