"""A run of an experiment against a committed reference run of it: Welch's t-test per row, Holm across rows.

The two runs share no seeds' noise in a way we may rely on (another machine gives other floating-point
rounding), so each row is compared as two independent samples of seeds: Welch's unequal-variance
t-test (Welch, Biometrika 1947; scipy ``ttest_ind(equal_var=False)``) with its confidence interval of
the difference of means, Holm-corrected across the rows compared. A row "agrees" when no difference is
detected at the corrected level; that is seed noise, not proof of equality.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from harness.stats._common import ALPHA, CONFIDENCE, close, is_constant
from harness.stats.paired import holm

AGREES = "agrees"
"""Agreement verdict: no difference between the two runs at the Holm-corrected level."""
DIFFERS = "differs"
"""Agreement verdict: the row's means differ at the Holm-corrected level."""
NO_AGREEMENT_TEST = "no test"
"""Agreement verdict when either run has fewer than 2 seeds of the row."""

AGREEMENT_COLUMNS = (
    "n",
    "n_reference",
    "mean",
    "mean_reference",
    "diff",
    "ci_low",
    "ci_high",
    "t",
    "df",
    "p",
    "p_holm",
    "verdict",
)


def _welch(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float, float, float, float]:
    """(t, df, p, ci_low, ci_high) of Welch's test of ``mean(ours) - mean(reference)``;
    exact at zero spread."""
    diff = float(np.mean(ours) - np.mean(reference))
    if is_constant(ours) and is_constant(reference):  # both spreads zero: the difference is known exactly
        if close(diff, 0.0):
            return (0.0, math.nan, 1.0, diff, diff)
        return (math.copysign(math.inf, diff), math.nan, 0.0, diff, diff)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one constant side: scipy still gives the right Welch answer
        result = stats.ttest_ind(ours, reference, equal_var=False)
        interval = result.confidence_interval(CONFIDENCE)
    return (
        float(result.statistic),
        float(result.df),
        float(result.pvalue),
        float(interval.low),
        float(interval.high),
    )


def reference_agreement(
    ours: pd.DataFrame,
    reference: pd.DataFrame,
    by: Sequence[str] = ("row",),
    value: str = "value",
    *,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Does each row of our run agree with the reference run within seed noise? One row per key of ``by``.

    ``ours`` and ``reference``: tidy tables, one row per seed, with the ``by`` columns and ``value``
    (NaN values ignored). Only keys both runs have are compared. Columns: ``by``, ``n``,
    ``n_reference`` (seeds), ``mean``, ``mean_reference``, ``diff`` (ours - reference), ``ci_low``,
    ``ci_high`` (95% Welch interval of ``diff``), ``t``, ``df`` (Welch-Satterthwaite), ``p``
    (two-sided), ``p_holm`` (Holm over the keys tested) and ``verdict``: :data:`AGREES` when
    ``p_holm >= alpha``, :data:`DIFFERS` otherwise, :data:`NO_AGREEMENT_TEST` with fewer than 2
    seeds on either side (then the test columns are NaN). Both sides without spread: exact (p 1 for
    equal means, else 0; ``df`` NaN).
    """
    keys = list(by)
    ours_groups = {
        k: g[value].to_numpy(float) for k, g in ours.dropna(subset=[value]).groupby(keys, sort=True)
    }
    ref_groups = {
        k: g[value].to_numpy(float) for k, g in reference.dropna(subset=[value]).groupby(keys, sort=True)
    }
    rows = []
    for key in sorted(set(ours_groups) & set(ref_groups), key=str):
        mine, theirs = ours_groups[key], ref_groups[key]
        row = {
            **dict(zip(keys, key, strict=True)),
            "n": mine.size,
            "n_reference": theirs.size,
            "mean": float(mine.mean()),
            "mean_reference": float(theirs.mean()),
            "diff": float(mine.mean() - theirs.mean()),
        }
        if mine.size < 2 or theirs.size < 2:
            row.update(t=math.nan, df=math.nan, p=math.nan, ci_low=math.nan, ci_high=math.nan)
        else:
            t, df, p, low, high = _welch(mine, theirs)
            row.update(t=t, df=df, p=p, ci_low=low, ci_high=high)
        rows.append(row)
    adjusted = holm([row["p"] for row in rows])
    for row, p_holm in zip(rows, adjusted, strict=True):
        row["p_holm"] = float(p_holm)
        row["verdict"] = NO_AGREEMENT_TEST if math.isnan(p_holm) else (AGREES if p_holm >= alpha else DIFFERS)
    return pd.DataFrame(rows, columns=[*keys, *AGREEMENT_COLUMNS])
