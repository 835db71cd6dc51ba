"""A run of an experiment against a committed reference run of it: equivalence (TOST) and Welch's test per
row,
Holm across rows.

The two runs share no seeds' noise in a way we may rely on (another machine gives other floating-point
rounding), so each row is compared as two independent samples of seeds, with unequal variances. Two
questions are asked of each row, each Holm-corrected across the rows compared:

- *Is the difference within the margin?* Two one-sided Welch t-tests (TOST; Schuirmann 1987;
  statsmodels ``ttost_ind(usevar="unequal")``) of ``|mean(ours) - mean(reference)| < margin``: when
  shown, the row **agrees** (within ±margin).
- *Is there a difference at all?* Welch's unequal-variance t-test (Welch, Biometrika 1947; scipy
  ``ttest_ind(equal_var=False)``) with its confidence interval: when shown (and equivalence is not), the
  row **differs**.

A row that shows neither is **undecided**: its seeds are too noisy to tell whether it lies within the
margin. No difference found is therefore not called agreement.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.weightstats import ttost_ind

from harness.stats._common import ALPHA, CONFIDENCE, close, is_constant
from harness.stats.paired import holm

AGREES = "agrees"
"""Agreement verdict: the two runs' means are within the margin (TOST at the Holm-corrected level)."""
DIFFERS = "differs"
"""Agreement verdict: the row's means differ (Welch at the Holm-corrected level) and are not shown within
the margin."""
UNDECIDED = "undecided"
"""Agreement verdict: neither within the margin nor different: too noisy to tell."""
NO_AGREEMENT_TEST = "no test"
"""Agreement verdict when either run has fewer than 2 seeds of the row."""
DEFAULT_AGREEMENT_MARGIN = 2.0
"""Points (of Recall@1) within which two runs' means count as agreeing: the main job's 12 seeds a side
show a row within 1.3 to 1.9 points at best (docs/report.md), so a 1-point margin could never be met."""

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
    "margin",
    "p_equivalence",
    "p_equivalence_holm",
    "smallest_margin",
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


def _equivalence_p(ours: np.ndarray, reference: np.ndarray, margin: float) -> float:
    """TOST p-value (Welch) for ``|true mean(ours) - true mean(reference)| < margin``; exact at zero
    spread."""
    diff = float(np.mean(ours) - np.mean(reference))
    if is_constant(ours) and is_constant(reference):  # both spreads zero: the answer is known exactly
        return 0.0 if abs(diff) < margin and not close(abs(diff), margin) else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one constant side: the other side's variance carries the test
        p, _, _ = ttost_ind(ours, reference, -margin, margin, usevar="unequal")
    return float(p)


def _smallest_margin(row: dict, tested: int, alpha: float) -> float:
    """The smallest margin the row's TOST passes at Holm's strictest level ``alpha / tested``: ``|diff| +
    t(1 - alpha / tested, df) * se`` (se from the Welch interval); ``|diff|`` at zero spread, NaN untested."""
    if math.isnan(row["p"]):
        return math.nan
    if math.isnan(row["df"]):  # both sides without spread: any margin above |diff|
        return abs(row["diff"])
    se = (row["ci_high"] - row["ci_low"]) / (2.0 * float(stats.t.ppf(0.5 + CONFIDENCE / 2, row["df"])))
    return abs(row["diff"]) + float(stats.t.ppf(1.0 - alpha / tested, row["df"])) * se


def reference_agreement(
    ours: pd.DataFrame,
    reference: pd.DataFrame,
    by: Sequence[str] = ("row",),
    value: str = "value",
    *,
    margin: float = DEFAULT_AGREEMENT_MARGIN,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Does each row of our run agree with the reference run within ``margin``? One row per key of ``by``.

    ``ours`` and ``reference``: tidy tables, one row per seed, with the ``by`` columns and ``value``
    (NaN values ignored). Only keys both runs have are compared. Columns: ``by``, ``n``,
    ``n_reference`` (seeds), ``mean``, ``mean_reference``, ``diff`` (ours - reference), ``ci_low``,
    ``ci_high`` (95% Welch interval of ``diff``), ``t``, ``df`` (Welch-Satterthwaite), ``p``
    (two-sided Welch), ``p_holm`` (Holm over the keys tested), ``margin``, ``p_equivalence`` (TOST,
    Welch), ``p_equivalence_holm`` (Holm over the keys tested), ``smallest_margin`` (the smallest
    margin these seeds show the row within at Holm's strictest level, ``alpha / keys tested``: a row
    is certainly *agrees* above it; at equal means it is what the design can resolve) and ``verdict``:

    - :data:`AGREES` when ``p_equivalence_holm < alpha`` (within ±margin; a difference smaller than
      the margin may still be detected, ``diff`` gives its size);
    - :data:`DIFFERS` when not, and ``p_holm < alpha``;
    - :data:`UNDECIDED` when neither (too noisy to tell within ±margin);
    - :data:`NO_AGREEMENT_TEST` with fewer than 2 seeds on either side (then the test columns are NaN).

    Both sides without spread: exact (Welch p 1 for equal means, else 0, ``df`` NaN; TOST p 0 when
    ``|diff| < margin``, else 1).
    """
    if not margin > 0:
        raise ValueError(f"margin must be a positive number of points, got {margin}")
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
            "margin": float(margin),
        }
        if mine.size < 2 or theirs.size < 2:
            row.update(t=math.nan, df=math.nan, p=math.nan, ci_low=math.nan, ci_high=math.nan)
            row["p_equivalence"] = math.nan
        else:
            t, df, p, low, high = _welch(mine, theirs)
            row.update(t=t, df=df, p=p, ci_low=low, ci_high=high)
            row["p_equivalence"] = _equivalence_p(mine, theirs, float(margin))
        rows.append(row)
    adjusted = holm([row["p"] for row in rows])
    adjusted_equivalence = holm([row["p_equivalence"] for row in rows])
    tested = int(sum(not math.isnan(p) for p in adjusted))
    for row, p_holm, p_equivalence_holm in zip(rows, adjusted, adjusted_equivalence, strict=True):
        row["p_holm"], row["p_equivalence_holm"] = float(p_holm), float(p_equivalence_holm)
        row["smallest_margin"] = _smallest_margin(row, tested, alpha)
        if math.isnan(p_holm):
            row["verdict"] = NO_AGREEMENT_TEST
        elif p_equivalence_holm < alpha:
            row["verdict"] = AGREES
        else:
            row["verdict"] = DIFFERS if p_holm < alpha else UNDECIDED
    return pd.DataFrame(rows, columns=[*keys, *AGREEMENT_COLUMNS])
