"""Statistics over seeds, against the paper and between losses: pure functions on tidy pandas tables.

Every function takes plain numbers or a tidy table (one row per run: group columns, a block column
such as ``seed``, a value column) and returns numbers or a new table; nothing is read or written.
Edge cases have defined outputs instead of exceptions or warnings (each is also stated where it
happens):

- one value (n = 1): standard deviation and confidence interval are NaN, no test is made, the
  verdict is :data:`NO_TEST`;
- zero variance (all values equal, up to rounding noise): the confidence interval has zero width;
  a one-sample or paired t-test gives ``t = 0, p = 1`` when the mean equals the reference and
  ``t = +-inf, p = 0`` otherwise;
- Wilcoxon signed-rank with all differences zero: ``statistic = 0, p = 1``;
- Friedman with fewer than 3 treatments or fewer than 2 complete blocks: NaN with a note; with every
  block fully tied: ``statistic = 0, p = 1``;
- Kendall tau with fewer than 2 common items or a constant ranking: NaN with a note.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
"""Level of every confidence interval."""
ALPHA = 1.0 - CONFIDENCE
"""Significance level matching :data:`CONFIDENCE`."""

REPRODUCED = "reproduced"
"""Verdict: the reference value lies inside our 95% confidence interval."""
BELOW = "below"
"""Verdict: our whole 95% confidence interval lies below the reference value."""
ABOVE = "above"
"""Verdict: our whole 95% confidence interval lies above the reference value."""
NO_TEST = "no test (1 seed)"
"""Verdict with a single value: no interval, no test."""

_REL_TOL = 1e-9  # values closer than this (relative to their size) count as equal


def _as_array(values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    return np.asarray(values, dtype=float)


def _is_constant(values: np.ndarray) -> bool:
    """Whether all values are equal up to rounding noise (e.g. 0.773 * 100 vs 77.3)."""
    scale = max(1.0, float(np.max(np.abs(values))))
    return float(np.ptp(values)) <= _REL_TOL * scale


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_REL_TOL)


def t_interval(values: Sequence[float] | np.ndarray | pd.Series) -> tuple[float, float]:
    """95% Student-t confidence interval of the mean: ``mean -+ t(0.975, n-1) * sd / sqrt(n)``.

    n < 2 -> ``(nan, nan)``; zero variance -> ``(mean, mean)``.
    """
    data = _as_array(values)
    if data.size < 2:
        return (math.nan, math.nan)
    mean = float(np.mean(data))
    if _is_constant(data):
        return (mean, mean)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, data.size - 1) * np.std(data, ddof=1) / math.sqrt(data.size))
    return (mean - half, mean + half)


def _std(data: np.ndarray) -> float:
    if data.size < 2:
        return math.nan
    return 0.0 if _is_constant(data) else float(np.std(data, ddof=1))


def summarize(runs: pd.DataFrame, by: Sequence[str], value: str = "value") -> pd.DataFrame:
    """One row per group of ``by``: ``n, mean, std, ci_low, ci_high`` of ``value`` over its rows.

    Rows whose value is NaN are ignored; groups left empty are dropped. Missing keys form their own
    group (they are not dropped). ``std`` is the sample standard deviation (ddof = 1).
    """
    rows = []
    for key, group in runs.dropna(subset=[value]).groupby(list(by), sort=True, dropna=False):
        data = group[value].to_numpy(dtype=float)
        low, high = t_interval(data)
        rows.append((*key, data.size, float(np.mean(data)), _std(data), low, high))
    return pd.DataFrame(rows, columns=[*by, "n", "mean", "std", "ci_low", "ci_high"])


@dataclass(frozen=True)
class ReferenceTest:
    """Our values against one reference value (the paper's): a one-sample t-test and a verdict."""

    n: int
    mean: float
    reference: float
    diff: float
    """``mean - reference``."""
    diff_ci_low: float
    diff_ci_high: float
    t: float
    p: float
    verdict: str


def reference_test(values: Sequence[float] | np.ndarray | pd.Series, reference: float) -> ReferenceTest:
    """Two-sided one-sample t-test of ``values`` against ``reference`` with a verdict.

    Verdict: :data:`REPRODUCED` when ``reference`` lies inside the 95% CI (bounds included, which is
    the same as ``p >= 0.05``), :data:`BELOW` / :data:`ABOVE` when the whole CI lies below / above it,
    :data:`NO_TEST` for a single value (then ``t``, ``p`` and the CI are NaN). Zero variance: the CI
    has zero width, ``t = 0, p = 1`` if the mean equals the reference, else ``t = +-inf, p = 0``.
    """
    data = _as_array(values)
    mean = float(np.mean(data))
    diff = mean - reference
    if data.size < 2:
        return ReferenceTest(int(data.size), mean, reference, diff, math.nan, math.nan, math.nan, math.nan, NO_TEST)
    low, high = t_interval(data)
    t, p = _one_sample_t(data - reference)
    if _close(low, reference) or _close(high, reference) or low <= reference <= high:
        verdict = REPRODUCED
    else:
        verdict = BELOW if high < reference else ABOVE
    return ReferenceTest(int(data.size), mean, reference, diff, low - reference, high - reference, t, p, verdict)


def _one_sample_t(differences: np.ndarray) -> tuple[float, float]:
    """Two-sided t-test of mean(differences) = 0, with the zero-variance cases defined (n >= 2)."""
    if _is_constant(differences):
        mean = float(np.mean(differences))
        if _close(mean, 0.0):
            return (0.0, 1.0)
        return (math.copysign(math.inf, mean), 0.0)
    result = stats.ttest_1samp(differences, 0.0)
    return (float(result.statistic), float(result.pvalue))


def compare_to_reference(
    runs: pd.DataFrame, by: Sequence[str], reference: str, value: str = "value"
) -> pd.DataFrame:
    """:func:`reference_test` per group of ``by``, for the groups whose ``reference`` column is set.

    ``reference`` must be constant within a group (it is the paper's value for that group).
    Returns ``by`` plus the fields of :class:`ReferenceTest` (the reference under ``reference``).
    """
    rows = []
    have = runs.dropna(subset=[value, reference])
    for key, group in have.groupby(list(by), sort=True, dropna=False):
        refs = group[reference].unique()
        if len(refs) != 1:
            raise ValueError(f"group {key} has {len(refs)} different reference values; expected one")
        result = asdict(reference_test(group[value], float(refs[0])))
        result[reference] = result.pop("reference")
        rows.append({**dict(zip(by, key, strict=True)), **result})
    columns = [*by, *(reference if f == "reference" else f for f in ReferenceTest.__dataclass_fields__)]
    return pd.DataFrame(rows, columns=columns)


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

    n < 2 -> everything but ``mean_diff`` NaN. Constant differences -> t as in :func:`reference_test`.
    Wilcoxon drops zero differences (scipy's ``zero_method="wilcox"``); all differences zero ->
    ``w = 0, p_w = 1``. With few blocks Wilcoxon cannot be small (n = 3: p >= 0.25, n = 5: p >= 0.0625).
    """
    diffs = _as_array(a) - _as_array(b)
    if diffs.size != _as_array(b).size:
        raise ValueError("paired_test needs two sequences of the same length")
    mean_diff = float(np.mean(diffs)) if diffs.size else math.nan
    if diffs.size < 2:
        return PairedTest(int(diffs.size), mean_diff, math.nan, math.nan, math.nan, math.nan)
    t, p_t = _one_sample_t(diffs)
    nonzero = diffs[np.abs(diffs) > _REL_TOL * max(1.0, float(np.max(np.abs(diffs))))]
    if nonzero.size == 0:
        w, p_w = 0.0, 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about normal approximations with ties
            result = stats.wilcoxon(nonzero)
        w, p_w = float(result.statistic), float(result.pvalue)
    return PairedTest(int(diffs.size), mean_diff, t, p_t, w, p_w)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given); NaN stays NaN and is not counted.

    Sorted ascending, ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))`` with m the number of
    non-NaN p-values.
    """
    pvals = _as_array(pvalues)
    adjusted = np.full(pvals.shape, math.nan)
    present = np.flatnonzero(~np.isnan(pvals))
    order = present[np.argsort(pvals[present], kind="stable")]
    m = order.size
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvals[index]))
        adjusted[index] = running
    return adjusted


def _wide(runs: pd.DataFrame, treatment: str, block: str, value: str) -> pd.DataFrame:
    """Blocks x treatments table of ``value`` (duplicates within a cell are averaged)."""
    return runs.pivot_table(index=block, columns=treatment, values=value, aggfunc="mean")


def _families(runs: pd.DataFrame, family: Sequence[str], value: str):
    """(key dict, group) for each family; a table with no family columns is one family."""
    data = runs.dropna(subset=[value])
    if not family:
        yield {}, data
        return
    for key, group in data.groupby(list(family), sort=True, dropna=False):
        yield dict(zip(family, key, strict=True)), group


def _ordered(present: Sequence[str], order: Sequence[str] | None) -> list[str]:
    """``present`` in the given order first, the rest sorted after it."""
    order = list(order or [])
    return [t for t in order if t in present] + sorted(t for t in present if t not in order)


def pairwise_comparisons(
    runs: pd.DataFrame,
    family: Sequence[str],
    treatment: str = "loss_label",
    block: str = "seed",
    value: str = "value",
    order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """:func:`paired_test` for every pair of treatments within each family, Holm-corrected per family.

    Pairs use the blocks both treatments have. Columns: ``family``, ``a, b`` (``a`` before ``b`` in
    ``order``, then alphabetical), the fields of :class:`PairedTest` (``mean_diff = a - b``) and
    ``p_t_holm, p_w_holm`` (Holm over the pairs of the family, separately for each test).
    """
    rows = []
    for key, group in _families(runs, family, value):
        wide = _wide(group, treatment, block, value)
        names = _ordered(list(wide.columns), order)
        family_rows = []
        for a, b in itertools.combinations(names, 2):
            both = wide[[a, b]].dropna()
            result = paired_test(both[a].to_numpy(), both[b].to_numpy())
            family_rows.append({**key, "a": a, "b": b, **asdict(result)})
        for test in ("p_t", "p_w"):
            adjusted = holm([r[test] for r in family_rows])
            for row, p_adj in zip(family_rows, adjusted, strict=True):
                row[f"{test}_holm"] = float(p_adj)
        rows.extend(family_rows)
    columns = [*family, "a", "b", *PairedTest.__dataclass_fields__, "p_t_holm", "p_w_holm"]
    return pd.DataFrame(rows, columns=columns)


@dataclass(frozen=True)
class FriedmanTest:
    """Friedman test of k treatments over n complete blocks."""

    k: int
    n: int
    statistic: float
    p: float
    note: str
    """Empty when the test was made; else why not."""


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
        return FriedmanTest(k, n, math.nan, math.nan, f"no test: {n} complete block(s), Friedman needs at least 2")
    if all(_is_constant(row) for row in complete.to_numpy(dtype=float)):
        return FriedmanTest(k, n, 0.0, 1.0, "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.friedmanchisquare(*(complete[c].to_numpy(dtype=float) for c in complete.columns))
    return FriedmanTest(k, n, float(result.statistic), float(result.pvalue), "")


def friedman_by_family(
    runs: pd.DataFrame, family: Sequence[str], treatment: str = "loss_label", block: str = "seed", value: str = "value"
) -> pd.DataFrame:
    """:func:`friedman_test` across all treatments of each family (e.g. the whole ablation)."""
    rows = [
        {**key, **asdict(friedman_test(_wide(group, treatment, block, value)))}
        for key, group in _families(runs, family, value)
    ]
    return pd.DataFrame(rows, columns=[*family, *FriedmanTest.__dataclass_fields__])


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
    if _is_constant(x) or _is_constant(y):
        return RankAgreement(n, math.nan, math.nan, "no ranking: all values equal on one side")
    result = stats.kendalltau(x, y)
    return RankAgreement(n, float(result.statistic), float(result.pvalue), "")


def rank_agreement_by_family(
    summary: pd.DataFrame,
    reference: pd.Series,
    family: Sequence[str],
    treatment: str = "loss_label",
    value: str = "mean",
) -> pd.DataFrame:
    """:func:`rank_agreement` of each family's ``value`` per ``treatment`` against ``reference``.

    ``reference`` is indexed by treatment (e.g. the paper's Table 2 R@1 by ``loss_label``).
    """
    rows = []
    for key, group in _families(summary, family, value):
        ours = group.groupby(treatment)[value].mean()
        rows.append({**key, **asdict(rank_agreement(ours, reference))})
    return pd.DataFrame(rows, columns=[*family, *RankAgreement.__dataclass_fields__])
