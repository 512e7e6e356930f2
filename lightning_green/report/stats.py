"""Bootstrap intervals over seeds, and whether two of them resolve a difference."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Resamples of the bootstrap intervals (percentile method, fixed seed so reports reproduce).
BOOTSTRAP_RESAMPLES = 10_000


def bootstrap_ci(
    values: Any, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. one figure per seed);
    ``None`` with fewer than two values (no spread to resample)."""
    x = np.asarray(
        [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=float
    )
    if x.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def resolved(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Whether two intervals do not overlap (a difference the seeds resolve)."""
    return a is not None and b is not None and (a[1] < b[0] or b[1] < a[0])


def fmt_ci(ci: tuple[float, float] | None, digits: int = 4) -> str:
    """An interval as ``[lo, hi]`` to ``digits`` significant digits; ``-`` for none."""
    return "-" if ci is None else f"[{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]"
