"""Losses compared on the same seeds: paired tests, Holm correction, planned comparisons with power.

A block is a seeds x losses table (rows = seeds, columns = losses, one value per cell, higher =
better, e.g. Recall@1 in points); seeds pair the losses (same initialisation and batch order).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from harness.stats._common import (
    ALPHA,
    CONFIDENCE,
    as_array,
    is_constant,
    nonzero,
    one_sample_t,
    sample_std,
)
from harness.stats.power import detectable_difference
from harness.stats.summary import t_interval

NEAR_THRESHOLD = (0.01, 0.1)
"""Holm p-values strictly between these bounds are near the 0.05 threshold: a re-run of the same grid on
another machine (other floating-point rounding) can move the p-value across 0.05 and flip the decision
(seen: 0.031 on one machine, 0.151 on another, for one comparison of the glyphs ablation)."""


def near_threshold(p_holm: float) -> bool:
    """Whether a Holm-adjusted p-value lies in the :data:`NEAR_THRESHOLD` band (NaN: no)."""
    return bool(NEAR_THRESHOLD[0] < p_holm < NEAR_THRESHOLD[1])


@dataclass(frozen=True)
class PairedTest:
    """Two treatments measured on the same blocks (seeds): paired t-test and Wilcoxon signed-rank."""

    n: int
    mean_diff: float
    """mean of ``a - b`` over the common blocks."""
    t: float
    p_t: float
    w: float
    p_w: float


def paired_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> PairedTest:
    """Paired two-sided t-test and Wilcoxon signed-rank test of ``a - b`` (same order = same block).

    n < 2 -> everything but ``mean_diff`` NaN. Constant differences: ``t = 0, p = 1`` when zero,
    else ``t = +-inf, p = 0``. Wilcoxon drops zero differences (scipy's ``zero_method="wilcox"``);
    all differences zero -> ``w = 0, p_w = 1``. With few blocks Wilcoxon cannot be small
    (see :func:`wilcoxon_min_p`).
    """
    diffs = as_array(a) - as_array(b)
    if diffs.size != as_array(b).size:
        raise ValueError("paired_test needs two sequences of the same length")
    mean_diff = float(np.mean(diffs)) if diffs.size else math.nan
    if diffs.size < 2:
        return PairedTest(int(diffs.size), mean_diff, math.nan, math.nan, math.nan, math.nan)
    t, p_t = one_sample_t(diffs)
    ranked = nonzero(diffs)
    if ranked.size == 0:
        w, p_w = 0.0, 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about normal approximations with ties
            result = stats.wilcoxon(ranked)
        w, p_w = float(result.statistic), float(result.pvalue)
    return PairedTest(int(diffs.size), mean_diff, t, p_t, w, p_w)


def wilcoxon_min_p(n: int) -> float:
    """Smallest two-sided p-value the exact Wilcoxon signed-rank test can give with ``n`` pairs.

    All differences of one sign and no ties or zeros: ``2 / 2**n`` (n = 3: 0.25, n = 5: 0.0625,
    n = 8: 0.0078); 1 for n = 0.
    """
    return min(1.0, 2.0 / 2.0**n)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (statsmodels ``multipletests``, same order as given).

    NaN stays NaN and is not counted. Sorted ascending, ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))``
    with m the number of non-NaN p-values (Holm, Scand. J. Statist. 1979).
    """
    pvals = as_array(pvalues)
    adjusted = np.full(pvals.shape, math.nan)
    present = ~np.isnan(pvals)
    if present.any():
        adjusted[present] = multipletests(pvals[present], alpha=ALPHA, method="holm")[1]
    return adjusted


def bca_interval(
    a: np.ndarray, b: np.ndarray, *, n_resamples: int = 9999, random_state: int = 0
) -> tuple[float, float]:
    """95% BCa bootstrap interval (Efron 1987; scipy ``stats.bootstrap``) of ``mean(a - b)``, resampling
    the pairs (seeds) together. n < 2 -> NaN; constant differences -> zero width; an interval scipy
    cannot form (too few distinct resamples) -> NaN.
    """
    diffs = a - b
    if diffs.size < 2:
        return (math.nan, math.nan)
    if is_constant(diffs):
        mean = float(np.mean(diffs))
        return (mean, mean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples (3 seeds) warn and give NaN
        result = stats.bootstrap(
            (a, b),
            lambda x, y, axis: np.mean(x - y, axis=axis),
            paired=True,
            vectorized=True,
            n_resamples=n_resamples,
            confidence_level=CONFIDENCE,
            method="BCa",
            random_state=np.random.default_rng(random_state),
        )
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


@dataclass(frozen=True)
class PlannedComparisons:
    """The planned paired comparisons of one block, one row each in ``table``.

    ``table`` columns: ``a, b, n`` (common seeds), ``mean_diff`` (mean of ``a - b``), ``sd_diff``,
    ``ci_low, ci_high`` (95% t interval), ``bca_low, bca_high`` (95% BCa bootstrap interval), ``p``
    (paired t), ``p_holm``, ``p_wilcoxon, p_wilcoxon_holm`` (NaN where Wilcoxon is omitted),
    ``detectable`` (:func:`~harness.stats.power.detectable_difference` of ``sd_diff`` and ``n`` at
    ``alpha / comparisons``), ``decision`` and ``near_threshold`` (:func:`near_threshold` of ``p_holm``:
    a decision a re-run on another machine can flip).
    """

    table: pd.DataFrame
    comparisons: int
    """Number of planned comparisons (the Holm family size)."""
    wilcoxon_omitted: bool
    """Whether Wilcoxon was left out of some comparison because it could not reach significance."""
    wilcoxon_note: str
    """One sentence for the report saying why, or empty."""


def _decision(row: dict, alpha: float) -> str:
    if row["n"] < 2:
        return f"no test ({row['n']} common seed{'s' if row['n'] != 1 else ''})"
    if row["p_holm"] < alpha:
        return f"{row['a'] if row['mean_diff'] > 0 else row['b']} better"
    return f"no difference larger than {_points(row['detectable'])} detectable"


def _points(value: float) -> str:
    """A difference for a sentence: one decimal from 1 up, two significant digits below."""
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2g}"


def planned_comparisons(
    block: pd.DataFrame,
    control: str = "MS",
    *,
    all_pairs: bool = False,
    alpha: float = ALPHA,
    power: float = 0.8,
    n_resamples: int = 9999,
    random_state: int = 0,
) -> PlannedComparisons:
    """Paired comparisons of a seeds x losses ``block``: ``control`` against each other column, Holm.

    With ``all_pairs`` every pair of columns is compared instead (``a`` before ``b`` in column order).
    Each comparison uses the seeds both columns have. The decision (higher values = better):

    - ``"<a> better"`` / ``"<b> better"``: Holm-adjusted paired t p-value below ``alpha``;
    - otherwise ``"no difference larger than D detectable"``, D = ``detectable`` (in the block's
      unit): the design (these seeds, this paired SD, ``alpha / comparisons``) would have detected
      a true difference of D with probability ``power``. It is not evidence that the losses are
      equal: D is stated however large it is (3 seeds and paired SD 1.2 give D = 10.4 points for 7
      comparisons), so a reader sees at once that the design cannot resolve smaller differences;
    - ``"no test (1 common seed)"`` below 2 common seeds.

    Wilcoxon's signed-rank test is given only for comparisons whose seeds can reach significance,
    :func:`wilcoxon_min_p` ``(n) < alpha / comparisons``; elsewhere it is NaN, ``wilcoxon_omitted``
    is set and ``wilcoxon_note`` says why, once.
    """
    names = list(block.columns)
    if all_pairs:
        pairs = list(itertools.combinations(names, 2))
    else:
        if control not in names:
            raise ValueError(f"control {control!r} is not a column of the block; columns: {names}")
        pairs = [(control, other) for other in names if other != control]
    comparisons = max(1, len(pairs))
    level = alpha / comparisons
    rows = []
    for a, b in pairs:
        both = block[[a, b]].dropna()
        a_values, b_values = both[a].to_numpy(dtype=float), both[b].to_numpy(dtype=float)
        test = paired_test(a_values, b_values)
        diffs = a_values - b_values
        ci_low, ci_high = t_interval(diffs)
        bca_low, bca_high = bca_interval(
            a_values, b_values, n_resamples=n_resamples, random_state=random_state
        )
        sd = sample_std(diffs)
        rows.append(
            {
                "a": a,
                "b": b,
                "n": test.n,
                "mean_diff": test.mean_diff,
                "sd_diff": sd,
                "ci_low": ci_low,
                "ci_high": ci_high,
                "bca_low": bca_low,
                "bca_high": bca_high,
                "p": test.p_t,
                "p_wilcoxon": test.p_w if wilcoxon_min_p(test.n) < level else math.nan,
                "detectable": detectable_difference(
                    sd, test.n, alpha=alpha, power=power, comparisons=comparisons
                ),
            }
        )
    p_holm = holm([row["p"] for row in rows])
    p_wilcoxon_holm = holm([row["p_wilcoxon"] for row in rows])
    for row, adjusted, adjusted_w in zip(rows, p_holm, p_wilcoxon_holm, strict=True):
        row.update(p_holm=float(adjusted), p_wilcoxon_holm=float(adjusted_w))
        row["decision"] = _decision(row, alpha)
        row["near_threshold"] = near_threshold(row["p_holm"])
    columns = [
        "a",
        "b",
        "n",
        "mean_diff",
        "sd_diff",
        "ci_low",
        "ci_high",
        "bca_low",
        "bca_high",
        "p",
        "p_holm",
        "p_wilcoxon",
        "p_wilcoxon_holm",
        "detectable",
        "decision",
        "near_threshold",
    ]
    table = pd.DataFrame(rows, columns=columns)
    omitted = [row["n"] for row in rows if row["n"] >= 2 and math.isnan(row["p_wilcoxon"])]
    note = ""
    if omitted:
        fewest = min(omitted)
        note = (
            f"Wilcoxon signed-rank omitted: with {fewest} seeds its smallest possible p-value, "
            f"{wilcoxon_min_p(fewest):.2g}, cannot reach {alpha:g}/{comparisons} = {level:.2g}."
        )
    return PlannedComparisons(table, comparisons, bool(omitted), note)
