"""Mean, standard deviation and Student-t confidence interval of each group of runs over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from harness.stats._common import CONFIDENCE, as_array, is_constant, sample_std


def t_interval(values: Sequence[float] | np.ndarray | pd.Series) -> tuple[float, float]:
    """95% Student-t confidence interval of the mean: ``mean -+ t(0.975, n-1) * sd / sqrt(n)``.

    n < 2 -> ``(nan, nan)``; zero variance -> ``(mean, mean)``.
    """
    data = as_array(values)
    if data.size < 2:
        return (math.nan, math.nan)
    mean = float(np.mean(data))
    if is_constant(data):
        return (mean, mean)
    half = float(
        stats.t.ppf(0.5 + CONFIDENCE / 2, data.size - 1) * np.std(data, ddof=1) / math.sqrt(data.size)
    )
    return (mean - half, mean + half)


def summarize(runs: pd.DataFrame, by: Sequence[str], value: str = "value") -> pd.DataFrame:
    """One row per group of ``by``: ``n, mean, std, ci_low, ci_high`` of ``value`` over its rows.

    Rows whose value is NaN are ignored; groups left empty are dropped. Missing keys form their own
    group (they are not dropped). ``std`` is the sample standard deviation (ddof = 1).
    """
    rows = []
    for key, group in runs.dropna(subset=[value]).groupby(list(by), sort=True, dropna=False):
        data = group[value].to_numpy(dtype=float)
        low, high = t_interval(data)
        rows.append((*key, data.size, float(np.mean(data)), sample_std(data), low, high))
    return pd.DataFrame(rows, columns=[*by, "n", "mean", "std", "ci_low", "ci_high"])
