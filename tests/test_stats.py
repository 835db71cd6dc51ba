"""harness.stats against hand-computed values and scipy, including the documented edge cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness import stats

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975, 2 degrees of freedom (printed tables: 4.303)


@pytest.fixture(autouse=True)
def _no_warnings():
    """Every edge case must have a defined output: a warning leaking out fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_t_interval_by_hand():
    low, high = stats.t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1
    half = T_975_DF2 / math.sqrt(3)
    assert low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert high - low == pytest.approx(4.968, abs=1e-3)


def test_t_interval_edge_cases():
    assert all(math.isnan(x) for x in stats.t_interval([5.0]))
    assert stats.t_interval([77.3, 77.3, 77.3]) == (77.3, 77.3)
    # rounding noise from the fraction -> percent conversion still counts as zero variance
    low, high = stats.t_interval([0.773 * 100, 77.3, 77.3])
    assert high - low == 0.0


def test_summarize_groups_and_missing_keys():
    runs = pd.DataFrame(
        {
            "loss": ["ms", "ms", "ms", "binomial", "binomial", "ms"],
            "preset": ["paper", "paper", "paper", None, None, "paper"],
            "value": [1.0, 2.0, 3.0, 4.0, 4.0, math.nan],
        }
    )
    out = stats.summarize(runs, ["loss", "preset"]).set_index("loss")
    assert list(out.columns) == ["preset", "n", "mean", "std", "ci_low", "ci_high"]
    assert out.loc["ms", "n"] == 3 and out.loc["ms", "mean"] == 2.0 and out.loc["ms", "std"] == 1.0
    assert out.loc["ms", "ci_high"] == pytest.approx(2 + T_975_DF2 / math.sqrt(3))
    # a missing preset forms its own group; zero variance -> zero-width interval, std 0
    assert out.loc["binomial", "n"] == 2 and out.loc["binomial", "std"] == 0.0
    assert out.loc["binomial", "ci_low"] == out.loc["binomial", "ci_high"] == 4.0


def test_summarize_single_seed():
    out = stats.summarize(pd.DataFrame({"g": ["a"], "value": [0.5]}), ["g"])
    assert out.loc[0, "n"] == 1 and out.loc[0, "mean"] == 0.5
    assert math.isnan(out.loc[0, "std"]) and math.isnan(out.loc[0, "ci_low"])


def test_reference_test_below_by_hand_and_scipy():
    result = stats.reference_test([1.0, 2.0, 3.0], 5.0)
    half = T_975_DF2 / math.sqrt(3)
    assert result.verdict == stats.BELOW
    assert result.diff == -3.0
    assert result.diff_ci_low == pytest.approx(-3 - half) and result.diff_ci_high == pytest.approx(-3 + half)
    assert result.t == pytest.approx(-3 / (1 / math.sqrt(3)))
    assert result.p == pytest.approx(sps.ttest_1samp([1.0, 2.0, 3.0], 5.0).pvalue)
    assert result.p < stats.ALPHA


def test_reference_test_verdicts():
    assert stats.reference_test([1.0, 2.0, 3.0], 2.0).verdict == stats.REPRODUCED
    assert stats.reference_test([1.0, 2.0, 3.0], -1.0).verdict == stats.ABOVE
    # the reference exactly on the interval bound still counts as inside
    low, _ = stats.t_interval([1.0, 2.0, 3.0])
    on_bound = stats.reference_test([1.0, 2.0, 3.0], low)
    assert on_bound.verdict == stats.REPRODUCED and on_bound.p == pytest.approx(stats.ALPHA)


def test_reference_test_edge_cases():
    single = stats.reference_test([70.0], 71.9)
    assert single.verdict == stats.NO_TEST and single.n == 1 and single.diff == pytest.approx(-1.9)
    assert math.isnan(single.p) and math.isnan(single.t) and math.isnan(single.diff_ci_low)
    equal = stats.reference_test([0.773 * 100, 77.3], 77.3)
    assert (equal.verdict, equal.t, equal.p, equal.diff_ci_low, equal.diff_ci_high) == (
        stats.REPRODUCED, 0.0, 1.0, pytest.approx(0.0), pytest.approx(0.0))
    above = stats.reference_test([80.0, 80.0, 80.0], 77.3)
    assert (above.verdict, above.t, above.p) == (stats.ABOVE, math.inf, 0.0)
    assert above.diff_ci_low == above.diff_ci_high == pytest.approx(2.7)


def test_compare_to_reference_only_groups_with_a_reference():
    runs = pd.DataFrame(
        {
            "loss": ["ms"] * 3 + ["triplet"] * 2,
            "value": [76.0, 77.0, 78.0, 60.0, 61.0],
            "paper": [77.3] * 3 + [math.nan] * 2,
        }
    )
    out = stats.compare_to_reference(runs, ["loss"], reference="paper")
    assert list(out["loss"]) == ["ms"]
    assert out.loc[0, "paper"] == 77.3 and out.loc[0, "verdict"] == stats.REPRODUCED
    assert out.loc[0, "diff"] == pytest.approx(-0.3)
    with pytest.raises(ValueError, match="reference values"):
        stats.compare_to_reference(runs.assign(paper=[1.0, 2.0, 3.0, 4.0, 5.0]), ["loss"], reference="paper")


def test_paired_test_by_hand_and_scipy():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]
    result = stats.paired_test(a, b)
    assert result.n == 4 and result.mean_diff == 2.5
    sd = float(np.std([1, 2, 3, 4], ddof=1))
    assert result.t == pytest.approx(2.5 / (sd / 2))
    assert result.p_t == pytest.approx(sps.ttest_rel(a, b).pvalue)
    # exact Wilcoxon: all 4 differences positive -> W- = 0, p = 2 / 2**4
    assert result.w == 0.0 and result.p_w == pytest.approx(0.125)


def test_paired_test_edge_cases():
    zero = stats.paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert (zero.t, zero.p_t, zero.w, zero.p_w, zero.mean_diff) == (0.0, 1.0, 0.0, 1.0, 0.0)
    shift = stats.paired_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert (shift.t, shift.p_t) == (math.inf, 0.0) and shift.p_w == pytest.approx(0.25)
    one = stats.paired_test([1.0], [0.0])
    assert one.n == 1 and one.mean_diff == 1.0 and math.isnan(one.p_t) and math.isnan(one.p_w)
    # zero differences are dropped by Wilcoxon, kept by the t-test
    some_zero = stats.paired_test([0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0])
    assert some_zero.p_w == pytest.approx(sps.wilcoxon([1.0, 2.0, 3.0]).pvalue)
    with pytest.raises(ValueError, match="same length"):
        stats.paired_test([1.0, 2.0], [1.0])


def test_holm_by_hand():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = stats.holm([0.02, math.nan, 0.04])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert stats.holm([]).size == 0


def _ablation(values: dict[str, list[float]], **keys) -> pd.DataFrame:
    """Tidy runs: one row per (loss_label, seed)."""
    rows = [
        {"loss_label": label, "seed": seed, "value": v, **keys}
        for label, vals in values.items()
        for seed, v in enumerate(vals)
    ]
    return pd.DataFrame(rows)


def test_pairwise_comparisons_holm_within_family():
    runs = pd.concat(
        [
            _ablation({"MS": [80, 81, 82, 83], "Binomial": [70, 72, 71, 73], "MS mining": [60, 60, 61, 59]},
                      dataset="cars"),
            _ablation({"MS": [1, 2], "Binomial": [1, 2]}, dataset="glyphs"),
        ]
    )
    out = stats.pairwise_comparisons(runs, ["dataset"], order=["Binomial", "MS mining", "MS"])
    cars = out[out.dataset == "cars"]
    assert list(zip(cars.a, cars.b, strict=True)) == [("Binomial", "MS mining"), ("Binomial", "MS"), ("MS mining", "MS")]
    assert cars.p_t_holm.to_numpy() == pytest.approx(stats.holm(cars.p_t.to_numpy()))
    assert cars.p_w_holm.to_numpy() == pytest.approx(stats.holm(cars.p_w.to_numpy()))
    binomial_ms = cars[(cars.a == "Binomial") & (cars.b == "MS")].iloc[0]
    assert binomial_ms.mean_diff == pytest.approx(71.5 - 81.5)
    assert binomial_ms.p_t == pytest.approx(sps.ttest_rel([70, 72, 71, 73], [80, 81, 82, 83]).pvalue)
    glyphs = out[out.dataset == "glyphs"].iloc[0]
    assert (glyphs.p_t, glyphs.p_t_holm, glyphs.p_w) == (1.0, 1.0, 1.0)


def test_pairwise_uses_common_seeds_only():
    runs = _ablation({"MS": [80, 81, 82], "Binomial": [70, 72]})
    row = stats.pairwise_comparisons(runs, []).iloc[0]
    assert (row.a, row.b, row.n) == ("Binomial", "MS", 2)
    assert row.mean_diff == pytest.approx(-9.5)


def test_friedman_by_hand():
    # the same ranking in both blocks: rank sums 2, 4, 6 -> chi2 = 12/(2*3*4) * 56 - 3*2*4 = 4
    wide = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "c": [5.0, 6.0]})
    result = stats.friedman_test(wide)
    assert (result.k, result.n, result.note) == (3, 2, "")
    assert result.statistic == pytest.approx(4.0) and result.p == pytest.approx(math.exp(-2.0))


def test_friedman_matches_scipy_and_edge_cases():
    data = {"a": [1.0, 5.0, 2.0, 7.0], "b": [2.0, 6.0, 4.0, 3.0], "c": [3.0, 4.0, 6.0, 9.0]}
    result = stats.friedman_test(pd.DataFrame(data))
    expected = sps.friedmanchisquare(*data.values())
    assert result.statistic == pytest.approx(expected.statistic) and result.p == pytest.approx(expected.pvalue)
    two = stats.friedman_test(pd.DataFrame({"a": [1.0, 2.0], "b": [2.0, 3.0]}))
    assert math.isnan(two.p) and "at least 3" in two.note
    incomplete = stats.friedman_test(pd.DataFrame({"a": [1.0, math.nan], "b": [2.0, 3.0], "c": [1.0, 1.0]}))
    assert incomplete.n == 1 and math.isnan(incomplete.statistic) and "block" in incomplete.note
    tied = stats.friedman_test(pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 2.0], "c": [1.0, 2.0]}))
    assert (tied.statistic, tied.p) == (0.0, 1.0)


def test_friedman_by_family():
    runs = _ablation({"MS": [80, 81], "Binomial": [70, 72], "MS mining": [60, 61]}, dataset="cars")
    out = stats.friedman_by_family(runs, ["dataset"])
    assert out.loc[0, "dataset"] == "cars" and out.loc[0, "statistic"] == pytest.approx(4.0)


def test_rank_agreement_by_hand_and_scipy():
    ours = pd.Series({"A": 1.0, "B": 2.0, "C": 3.0, "D": 4.0, "extra": 9.0})
    paper = pd.Series({"A": 1.0, "B": 3.0, "C": 2.0, "D": 4.0, "missing": 0.0})
    result = stats.rank_agreement(ours, paper)
    assert result.n == 4 and result.note == ""
    assert result.tau == pytest.approx(4 / 6)  # 5 concordant, 1 discordant pair
    assert result.p == pytest.approx(sps.kendalltau([1, 2, 3, 4], [1, 3, 2, 4]).pvalue)
    reverse = stats.rank_agreement(ours, -paper)
    assert reverse.tau == pytest.approx(-4 / 6)


def test_rank_agreement_edge_cases():
    one = stats.rank_agreement(pd.Series({"A": 1.0}), pd.Series({"A": 2.0, "B": 3.0}))
    assert one.n == 1 and math.isnan(one.tau) and "1 item" in one.note
    flat = stats.rank_agreement(pd.Series({"A": 1.0, "B": 1.0}), pd.Series({"A": 2.0, "B": 3.0}))
    assert math.isnan(flat.tau) and math.isnan(flat.p) and "equal" in flat.note


def test_rank_agreement_by_family():
    summary = pd.DataFrame(
        {"dataset": ["glyphs"] * 3, "loss_label": ["Binomial", "MS mining", "MS"], "mean": [50.0, 40.0, 60.0]}
    )
    table2 = pd.Series({"Binomial": 71.9, "MS mining": 67.0, "MS": 77.3, "BinLifted": 70.4})
    out = stats.rank_agreement_by_family(summary, table2, ["dataset"])
    assert out.loc[0, "n"] == 3 and out.loc[0, "tau"] == pytest.approx(1.0)
