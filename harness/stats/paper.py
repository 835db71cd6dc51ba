"""Our seeds against a published number: prediction-interval verdicts and equivalence within a margin.

A published number is one run (in the paper studied here, a checkpoint selected on the test set), so
the question is whether ONE new run of our setup would land where it did. That is answered by a
prediction interval for one observation (e.g. Hahn & Meeker, *Statistical Intervals*, 1991, ch. 4;
NIST/SEMATECH e-Handbook 7.1.4), not by the confidence interval of our mean: the latter shrinks
with n and ignores the paper run's own noise, so at equal true means it calls about 16% of 3-seed
cells "not reproduced" instead of 5%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.weightstats import ttost_ind

from harness.stats._common import ALPHA, as_array, close, is_constant, sample_std

CONSISTENT = "consistent"
"""Paper verdict: the paper's value lies inside our prediction interval for one run."""
BELOW = "below"
"""Verdict: our runs lie below the reference value (the whole interval is below it)."""
ABOVE = "above"
"""Verdict: our runs lie above the reference value (the whole interval is above it)."""
NOT_TESTABLE = "no test"
"""Paper verdict with fewer than 2 seeds: no interval, no test."""


def prediction_interval(values: np.ndarray, *, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided ``1 - alpha`` prediction interval for one new run, along the last axis of ``values``.

    ``mean -+ t(1 - alpha/2, n-1) * s * sqrt(1 + 1/n)`` with ``s`` the sample SD (ddof 1) of the n
    values (n >= 2). Vectorised: a (..., n) array gives (...) shaped bounds. It assumes the new run
    is a normal draw with our mean and SD; the interval is exact under that model.
    """
    data = np.asarray(values, dtype=float)
    n = data.shape[-1]
    if n < 2:
        raise ValueError(f"a prediction interval needs at least 2 values, got {n}")
    mean = data.mean(axis=-1)
    half = stats.t.ppf(1.0 - alpha / 2, n - 1) * data.std(axis=-1, ddof=1) * math.sqrt(1.0 + 1.0 / n)
    return mean - half, mean + half


def _equivalence_p(data: np.ndarray, paper: float, margin: float) -> float:
    """TOST p-value for ``|true mean of our runs - true mean of the paper's| < margin``."""
    diff = float(np.mean(data)) - paper
    if is_constant(data):  # zero spread: the t statistics are +-inf, the answer is exact
        return 0.0 if abs(diff) < margin and not close(abs(diff), margin) else 1.0
    p, _, _ = ttost_ind(data, np.array([paper]), -margin, margin, usevar="pooled")
    return float(p)


def paper_verdict(
    ours: Sequence[float] | np.ndarray | pd.Series,
    paper: float,
    *,
    margin: float | None = None,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Would one new run of ours land where the paper's single run did? Verdict and optional equivalence.

    Keys: ``n``, ``mean``, ``sd`` (of our runs; NaN values are ignored), ``paper``, ``diff``
    (``mean - paper``), ``low``, ``high`` (the :func:`prediction_interval` at ``1 - alpha``) and
    ``verdict``: :data:`CONSISTENT` when ``low <= paper <= high`` (bounds included), :data:`BELOW`
    when ``high < paper`` (our runs fall short of the paper), :data:`ABOVE` when ``low > paper``,
    :data:`NOT_TESTABLE` (``"no test"``; interval NaN) with fewer than 2 runs. At equal true means,
    with the paper run drawn from the same noise as ours, the verdict is wrongly below/above with
    probability ``alpha`` exactly (normal noise).

    With ``margin`` (points, > 0) also ``margin``, ``p_equivalence`` and ``equivalent``
    (``p_equivalence < alpha``): two one-sided tests (Schuirmann 1987) that the true difference
    between our mean and the paper's lies within ``+-margin``. The paper value is treated as ONE
    observation with our noise, i.e. a two-sample TOST with pooled variance where the second sample
    is the paper run (statsmodels ``ttost_ind(ours, [paper], usevar="pooled")``): standard error
    ``s * sqrt(1/n + 1)``, n - 1 degrees of freedom, the same spread as the prediction interval. A
    one-sample TOST of our mean against ``paper +- margin`` would treat the paper's one run as exact
    and declare equivalence too easily. With n < 2 equivalence cannot be shown (``equivalent`` False,
    p NaN); with zero spread the test is exact (p 0 when ``|diff| < margin``, else 1).
    """
    data = as_array(ours)
    data = data[~np.isnan(data)]
    n = int(data.size)
    mean = float(np.mean(data)) if n else math.nan
    result: dict[str, Any] = {
        "n": n,
        "mean": mean,
        "sd": sample_std(data),
        "paper": float(paper),
        "diff": mean - paper,
        "low": math.nan,
        "high": math.nan,
        "verdict": NOT_TESTABLE,
    }
    if margin is not None:
        if not margin > 0:
            raise ValueError(f"margin must be a positive number of points, got {margin}")
        result.update(margin=float(margin), p_equivalence=math.nan, equivalent=False)
    if n < 2:
        return result
    if is_constant(data):
        low = high = mean
    else:
        low_array, high_array = prediction_interval(data, alpha=alpha)
        low, high = float(low_array), float(high_array)
    if close(low, paper) or close(high, paper) or low <= paper <= high:
        verdict = CONSISTENT
    else:
        verdict = BELOW if high < paper else ABOVE
    result.update(low=low, high=high, verdict=verdict)
    if margin is not None:
        p = _equivalence_p(data, float(paper), float(margin))
        result.update(p_equivalence=p, equivalent=bool(p < alpha))
    return result
