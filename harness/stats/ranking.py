"""Ranking several losses over seeds: Friedman test, average ranks, post-hoc tests, critical difference.

Follows Demšar, "Statistical Comparisons of Classifiers over Multiple Data Sets" (JMLR 2006): the
Friedman test over the blocks (seeds), then a post-hoc test on the average ranks drawn as a
critical-difference diagram (scikit-posthocs). Also Kendall's tau between our ranking and the paper's.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import scikit_posthocs
from scipy import stats

from harness.stats._common import ALPHA, is_constant


@dataclass(frozen=True)
class FriedmanTest:
    """Friedman test of k treatments over n complete blocks."""

    k: int
    n: int
    statistic: float
    p: float
    note: str
    """Empty when the test was made; else why not."""


def _all_tied(complete: pd.DataFrame) -> bool:
    return all(is_constant(row) for row in complete.to_numpy(dtype=float))


def friedman_test(wide: pd.DataFrame) -> FriedmanTest:
    """Friedman test on a blocks x treatments table; blocks with a missing value are dropped.

    Fewer than 3 treatments or fewer than 2 complete blocks -> NaN with a note; every block fully
    tied -> ``statistic = 0, p = 1``.
    """
    complete = wide.dropna()
    k, n = complete.shape[1], complete.shape[0]
    if k < 3:
        return FriedmanTest(k, n, math.nan, math.nan, f"no test: {k} treatment(s), Friedman needs at least 3")
    if n < 2:
        return FriedmanTest(
            k, n, math.nan, math.nan, f"no test: {n} complete block(s), Friedman needs at least 2"
        )
    if _all_tied(complete):
        return FriedmanTest(k, n, 0.0, 1.0, "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.friedmanchisquare(*(complete[c].to_numpy(dtype=float) for c in complete.columns))
    return FriedmanTest(k, n, float(result.statistic), float(result.pvalue), "")


def nemenyi_critical_difference(k: int, n: int, *, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of average ranks: ``q_alpha * sqrt(k (k + 1) / (6 n))``.

    ``q_alpha`` is the studentized range quantile ``q(1 - alpha; k, inf) / sqrt(2)`` (Demšar 2006,
    Table 5a: 2.343 for k = 3, 3.031 for k = 8 at alpha 0.05). Two losses whose average ranks over
    ``n`` blocks differ by more than this differ at level ``alpha`` (k >= 2, n >= 1).
    """
    if k < 2 or n < 1:
        raise ValueError(f"a critical difference needs k >= 2 treatments and n >= 1 blocks, got k={k}, n={n}")
    q_alpha = float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)
    return q_alpha * math.sqrt(k * (k + 1) / (6.0 * n))


@dataclass(frozen=True)
class FriedmanRanking:
    """Everything a critical-difference diagram needs, plus the Friedman test it rests on.

    Draw it with ``scikit_posthocs.critical_difference_diagram(r.ranks, r.pvalues, cd=...)``
    (pass ``cd=r.critical_difference`` with the Nemenyi post-hoc, where the two agree).
    """

    friedman: FriedmanTest
    ranks: pd.Series
    """Average rank per treatment over the complete blocks (1 = best), ascending; NaN without blocks."""
    pvalues: pd.DataFrame
    """Post-hoc p-values, treatments x treatments (diagonal 1); all NaN when Friedman made no test."""
    critical_difference: float
    """Nemenyi's critical difference at ``alpha`` (NaN when Friedman made no test)."""
    posthoc: str
    """The post-hoc test: ``"nemenyi"`` or ``"conover"`` (Conover's, Holm-adjusted)."""


def friedman_ranking(
    block: pd.DataFrame,
    *,
    posthoc: Literal["nemenyi", "conover"] = "nemenyi",
    alpha: float = ALPHA,
    higher_is_better: bool = True,
) -> FriedmanRanking:
    """Friedman test, average ranks and post-hoc p-values of a seeds x losses ``block``.

    Seeds with a missing value are dropped (the test needs complete blocks). Within each seed the
    best loss gets rank 1 (ties share the average rank). Post-hoc tests from scikit-posthocs:
    Nemenyi (``posthoc_nemenyi_friedman``; all-pairs, conservative) or Conover
    (``posthoc_conover_friedman`` with Holm adjustment; more powerful). Every seed fully tied ->
    post-hoc p-values 1. Fewer than 3 losses or 2 complete seeds -> the Friedman note says so and
    the p-values and critical difference are NaN.
    """
    complete = block.dropna()
    names = list(block.columns)
    friedman = friedman_test(block)
    if complete.empty:
        ranks = pd.Series(math.nan, index=names, dtype=float)
    else:
        ranks = complete.rank(axis=1, ascending=not higher_is_better).mean().sort_values(kind="stable")
    pvalues = pd.DataFrame(math.nan, index=ranks.index, columns=ranks.index)
    critical = math.nan
    if not friedman.note:
        critical = nemenyi_critical_difference(friedman.k, friedman.n, alpha=alpha)
        if _all_tied(complete):
            pvalues.loc[:, :] = 1.0
        elif posthoc == "nemenyi":
            pvalues = scikit_posthocs.posthoc_nemenyi_friedman(complete)
        elif posthoc == "conover":
            pvalues = scikit_posthocs.posthoc_conover_friedman(complete, p_adjust="holm")
        else:
            raise ValueError(f"posthoc must be 'nemenyi' or 'conover', got {posthoc!r}")
        pvalues = pvalues.loc[ranks.index, ranks.index].astype(float)
    pvalues.index.name = pvalues.columns.name = None
    return FriedmanRanking(friedman, ranks, pvalues, critical, posthoc)


@dataclass(frozen=True)
class RankAgreement:
    """Kendall tau-b between two scorings of the same items (higher = better in both)."""

    n: int
    tau: float
    p: float
    note: str


def rank_agreement(ours: pd.Series, reference: pd.Series) -> RankAgreement:
    """Kendall tau-b (scipy, two-sided p) between ``ours`` and ``reference`` over their common index.

    Fewer than 2 common items, or either side constant (no ranking) -> NaN with a note.
    """
    common = ours.dropna().index.intersection(reference.dropna().index)
    n = len(common)
    if n < 2:
        return RankAgreement(n, math.nan, math.nan, f"no ranking: {n} item(s) in common with the reference")
    x, y = ours[common].to_numpy(dtype=float), reference[common].to_numpy(dtype=float)
    if is_constant(x) or is_constant(y):
        return RankAgreement(n, math.nan, math.nan, "no ranking: all values equal on one side")
    result = stats.kendalltau(x, y)
    return RankAgreement(n, float(result.statistic), float(result.pvalue), "")
