"""Shared helpers of harness.stats: levels, tolerant equality, zero-variance-safe t-test."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
"""Level of every confidence interval."""
ALPHA = 1.0 - CONFIDENCE
"""Significance level matching :data:`CONFIDENCE`."""

_REL_TOL = 1e-9  # values closer than this (relative to their size) count as equal


def as_array(values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    """``values`` as a float NumPy array."""
    return np.asarray(values, dtype=float)


def is_constant(values: np.ndarray) -> bool:
    """Whether all values are equal up to rounding noise (e.g. 0.773 * 100 vs 77.3)."""
    scale = max(1.0, float(np.max(np.abs(values))))
    return float(np.ptp(values)) <= _REL_TOL * scale


def close(a: float, b: float) -> bool:
    """Whether two numbers are equal up to rounding noise."""
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_REL_TOL)


def nonzero(differences: np.ndarray) -> np.ndarray:
    """The differences that are not zero up to rounding noise (what Wilcoxon's test ranks)."""
    if differences.size == 0:
        return differences
    return differences[np.abs(differences) > _REL_TOL * max(1.0, float(np.max(np.abs(differences))))]


def sample_std(data: np.ndarray) -> float:
    """Sample standard deviation (ddof 1); NaN below 2 values, exactly 0 for constant values."""
    if data.size < 2:
        return math.nan
    return 0.0 if is_constant(data) else float(np.std(data, ddof=1))


def one_sample_t(differences: np.ndarray) -> tuple[float, float]:
    """Two-sided t-test of mean(differences) = 0, with the zero-variance cases defined (n >= 2).

    Constant differences: ``t = 0, p = 1`` when they are zero, else ``t = +-inf, p = 0``.
    """
    if is_constant(differences):
        mean = float(np.mean(differences))
        if close(mean, 0.0):
            return (0.0, 1.0)
        return (math.copysign(math.inf, mean), 0.0)
    result = stats.ttest_1samp(differences, 0.0)
    return (float(result.statistic), float(result.pvalue))
