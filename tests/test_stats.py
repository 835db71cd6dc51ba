"""harness.stats against hand-computed values, scipy, statsmodels and scikit-posthocs, edge cases included."""

from __future__ import annotations

import math
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
import scikit_posthocs
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

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
    assert result.statistic == pytest.approx(expected.statistic) and result.p == pytest.approx(
        expected.pvalue
    )
    two = stats.friedman_test(pd.DataFrame({"a": [1.0, 2.0], "b": [2.0, 3.0]}))
    assert math.isnan(two.p) and "at least 3" in two.note
    incomplete = stats.friedman_test(pd.DataFrame({"a": [1.0, math.nan], "b": [2.0, 3.0], "c": [1.0, 1.0]}))
    assert incomplete.n == 1 and math.isnan(incomplete.statistic) and "block" in incomplete.note
    tied = stats.friedman_test(pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 2.0], "c": [1.0, 2.0]}))
    assert (tied.statistic, tied.p) == (0.0, 1.0)


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


# --- our seeds against the paper's one run -------------------------------------------------------

PI_HALF_123 = T_975_DF2 * 1.0 * math.sqrt(1 + 1 / 3)  # [1, 2, 3]: mean 2, sd 1 -> half-width 4.968


def test_paper_verdict_prediction_interval_by_hand():
    out = stats.paper_verdict([1.0, 2.0, 3.0], 2.5)
    assert (out["n"], out["mean"], out["sd"], out["paper"], out["diff"]) == (3, 2.0, 1.0, 2.5, -0.5)
    assert out["low"] == pytest.approx(2 - PI_HALF_123) and out["high"] == pytest.approx(2 + PI_HALF_123)
    assert out["verdict"] == stats.CONSISTENT and "equivalent" not in out
    assert stats.paper_verdict([1.0, 2.0, 3.0], 7.0)["verdict"] == stats.BELOW  # high 6.968 < 7
    assert stats.paper_verdict([1.0, 2.0, 3.0], -3.0)["verdict"] == stats.ABOVE  # low -2.968 > -3
    on_bound = stats.paper_verdict([1.0, 2.0, 3.0], 2 + PI_HALF_123)
    assert on_bound["verdict"] == stats.CONSISTENT
    # 80% interval: t(0.9, 2) = 1.8856
    narrow = stats.paper_verdict([1.0, 2.0, 3.0], 2.5, alpha=0.2)
    assert narrow["high"] == pytest.approx(2 + 1.885618083 * math.sqrt(4 / 3))


def test_paper_verdict_edge_cases():
    single = stats.paper_verdict([70.0, math.nan], 71.9, margin=1.0)
    assert single["verdict"] == stats.NOT_TESTABLE == "no test" and single["n"] == 1
    assert math.isnan(single["low"]) and math.isnan(single["p_equivalence"]) and single["equivalent"] is False
    flat = stats.paper_verdict([0.773 * 100, 77.3], 77.3, margin=0.5)
    assert flat["low"] == flat["high"] == pytest.approx(77.3) and flat["verdict"] == stats.CONSISTENT
    assert (flat["p_equivalence"], flat["equivalent"]) == (0.0, True)
    far = stats.paper_verdict([77.3, 77.3], 80.0, margin=0.5)
    assert far["verdict"] == stats.BELOW and (far["p_equivalence"], far["equivalent"]) == (1.0, False)
    with pytest.raises(ValueError, match="margin"):
        stats.paper_verdict([1.0, 2.0], 1.5, margin=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        stats.prediction_interval(np.array([1.0]))


def test_paper_verdict_tost_treats_the_paper_as_one_run():
    ours, paper, margin = np.array([76.0, 77.5, 78.2]), 77.3, 2.0
    out = stats.paper_verdict(ours, paper, margin=margin)
    # by hand: diff / (s sqrt(1 + 1/n)) against t with n - 1 df, the larger one-sided p
    se = float(np.std(ours, ddof=1)) * math.sqrt(1 + 1 / 3)
    diff = float(np.mean(ours)) - paper
    by_hand = max(sps.t.sf((diff + margin) / se, 2), sps.t.cdf((diff - margin) / se, 2))
    assert out["p_equivalence"] == pytest.approx(by_hand)
    assert out["p_equivalence"] == pytest.approx(
        ttost_ind(ours, [paper], -margin, margin, usevar="pooled")[0]
    )
    assert out["equivalent"] is False
    # a one-sample TOST (the paper value taken as exact) would call this equivalent: the documented reason
    assert ttost_paired(ours, np.full(3, paper), -margin, margin)[0] < 0.05
    tight = stats.paper_verdict([77.0, 77.2, 77.1, 76.9, 77.0], 77.0, margin=1.0)
    assert tight["equivalent"] is True and tight["p_equivalence"] < 0.05


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_paper_verdict_false_alarm_rate_is_nominal(n):
    """Equal true means, the paper run drawn from the same noise: below/above 2.5% each, 5% in all."""
    reps = 20_000
    rng = np.random.default_rng(2024 + n)
    ours = 70.0 + 1.5 * rng.standard_normal((reps, n))
    paper = 70.0 + 1.5 * rng.standard_normal(reps)
    low, high = stats.prediction_interval(ours)
    below, above = np.mean(high < paper), np.mean(low > paper)
    tolerance = 4 * math.sqrt(0.05 * 0.95 / reps)  # 4 simulation standard errors: 0.0062
    assert below + above == pytest.approx(0.05, abs=tolerance)
    assert below == pytest.approx(0.025, abs=tolerance) and above == pytest.approx(0.025, abs=tolerance)
    # the old rule (paper inside the CI of our mean) misses nominal on the same draws, by the amount theory
    # says, 2 P(T_{n-1} > t_crit / sqrt(n + 1)) (16.5% at n = 3): the simulation tells the two rules apart
    t_crit = sps.t.ppf(0.975, n - 1)
    old_rate = np.mean(np.abs(ours.mean(axis=1) - paper) > t_crit * ours.std(axis=1, ddof=1) / math.sqrt(n))
    assert old_rate == pytest.approx(2 * sps.t.sf(t_crit / math.sqrt(n + 1), n - 1), abs=2 * tolerance)
    assert old_rate > 0.05 + 4 * tolerance
    # paper_verdict applies exactly this rule
    for i in range(200):
        verdict = stats.paper_verdict(ours[i], paper[i])["verdict"]
        expected = (
            stats.BELOW if high[i] < paper[i] else stats.ABOVE if low[i] > paper[i] else stats.CONSISTENT
        )
        assert verdict == expected


# --- power -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("comparisons", [1, 7])
def test_detectable_difference_matches_statsmodels(comparisons):
    """statsmodels' power at our difference is the target; its own solver agrees wherever it converges.

    At alpha 0.05/7 statsmodels is fragile with 3-4 seeds: its solver silently returns a difference
    with power 0.65 (4 seeds) and its power is NaN near the answer (its lower tail, scipy's
    ``nct.cdf`` far out, is NaN); there the upper tail, which is all of the power, is checked.
    """
    power, level, converged = TTestPower(), 0.05 / comparisons, 0
    for n in range(3, 13):
        ours = stats.detectable_difference(1.2, n, comparisons=comparisons)
        reached = power.power(ours / 1.2, n, level, alternative="two-sided")
        if math.isnan(reached):
            reached = sps.nct.sf(sps.t.isf(level / 2, n - 1), n - 1, ours / 1.2 * math.sqrt(n))
        assert reached == pytest.approx(0.8, abs=1e-8)
        effect = power.solve_power(nobs=n, alpha=level, power=0.8, alternative="two-sided")
        if power.power(effect, n, level, alternative="two-sided") == pytest.approx(0.8, abs=1e-6):
            assert ours == pytest.approx(1.2 * effect, rel=1e-6)
            converged += 1
    assert converged >= 9
    effect = power.solve_power(nobs=6, alpha=0.01, power=0.9, alternative="two-sided")
    assert stats.detectable_difference(2.0, 6, alpha=0.01, power=0.9) == pytest.approx(2.0 * effect, rel=1e-6)


def test_detectable_difference_facts_and_edge_cases():
    # paired SD 1.2, 7 comparisons, 80% power: about 10 points with 3 seeds, 3.4 with 5, 2.0 with 8,
    # 1.7 with 10
    got = [stats.detectable_difference(1.2, n, comparisons=7) for n in (3, 5, 8, 10)]
    assert got == pytest.approx([10.40, 3.45, 2.03, 1.69], abs=0.01)
    # 2 seeds: statsmodels' solver fails there, ours still reaches the stated power
    two = stats.detectable_difference(1.0, 2, comparisons=7)
    level = 0.05 / 7
    crit = sps.t.isf(level / 2, 1)
    assert sps.nct.sf(crit, 1, two * math.sqrt(2)) == pytest.approx(0.8, abs=1e-6)
    assert stats.detectable_difference(1.2, 1) == math.inf
    assert stats.detectable_difference(0.0, 3) == 0.0
    assert math.isnan(stats.detectable_difference(math.nan, 3))
    with pytest.raises(ValueError, match="comparisons"):
        stats.detectable_difference(1.0, 3, comparisons=0)
    with pytest.raises(ValueError, match="power"):
        stats.detectable_difference(1.0, 3, power=1.0)


def test_seeds_needed_is_the_smallest_n_reaching_power():
    power = TTestPower()
    for difference, sd, comparisons in [(2.0, 1.2, 7), (1.0, 1.0, 1), (0.5, 1.0, 3), (3.0, 2.1, 7)]:
        n = stats.seeds_needed(difference, sd, comparisons=comparisons)
        level = 0.05 / comparisons
        assert power.power(difference / sd, n, level, alternative="two-sided") >= 0.8
        assert power.power(difference / sd, n - 1, level, alternative="two-sided") < 0.8
    assert stats.seeds_needed(2.0, 1.2, comparisons=7) == 9
    assert stats.seeds_needed(-2.0, 1.2, comparisons=7) == 9  # the sign does not matter
    assert stats.seeds_needed(1.0, 1.0) == math.ceil(power.solve_power(1.0, None, 0.05, 0.8))
    assert stats.seeds_needed(100.0, 1.0, comparisons=7) == 2 and stats.seeds_needed(1.0, 0.0) == 2
    with pytest.raises(ValueError, match="non-zero"):
        stats.seeds_needed(0.0, 1.0)
    with pytest.raises(ValueError, match="sd"):
        stats.seeds_needed(1.0, math.nan)


# --- planned comparisons ---------------------------------------------------------------------------


def test_wilcoxon_min_p_matches_scipy_exact():
    for n in range(1, 11):
        assert stats.wilcoxon_min_p(n) == pytest.approx(sps.wilcoxon(np.arange(1.0, n + 1)).pvalue)
    assert stats.wilcoxon_min_p(0) == 1.0


BLOCK = pd.DataFrame(
    {
        "MS": [50.0, 52.0, 51.0, 53.0, 49.0],
        "Binomial": [46.0, 47.5, 47.0, 48.0, 45.0],  # MS - Binomial: 4, 4.5, 4, 5, 4
        "LiftedStruct*": [50.5, 51.0, 52.5, 52.0, 50.0],  # MS - Lifted: -0.5, 1, -1.5, 1, -1
        "BinLifted": [56.0, 57.0, 56.5, 58.0, 55.5],  # MS - BinLifted: -6, -5, -5.5, -5, -6.5
    }
)


def test_planned_comparisons_against_scipy_and_statsmodels():
    result = stats.planned_comparisons(BLOCK, n_resamples=2000, random_state=7)
    table = result.table.set_index("b")
    assert result.comparisons == 3 and list(table.index) == ["Binomial", "LiftedStruct*", "BinLifted"]
    assert set(table["a"]) == {"MS"} and set(table["n"]) == {5}
    diffs = {b: BLOCK["MS"].to_numpy() - BLOCK[b].to_numpy() for b in table.index}
    assert table.loc["Binomial", "mean_diff"] == pytest.approx(4.3)
    assert table.loc["LiftedStruct*", "mean_diff"] == pytest.approx(-0.2)
    p_raw = [sps.ttest_rel(BLOCK["MS"], BLOCK[b]).pvalue for b in table.index]
    assert table["p"].to_numpy() == pytest.approx(p_raw)
    assert table["p_holm"].to_numpy() == pytest.approx(multipletests(p_raw, method="holm")[1])
    for b, d in diffs.items():
        row = table.loc[b]
        assert (row.ci_low, row.ci_high) == pytest.approx(stats.t_interval(d))
        assert row.sd_diff == pytest.approx(np.std(d, ddof=1))
        assert row.detectable == pytest.approx(
            stats.detectable_difference(np.std(d, ddof=1), 5, comparisons=3)
        )
        boot = sps.bootstrap(
            (BLOCK["MS"].to_numpy(), BLOCK[b].to_numpy()),
            lambda x, y, axis: np.mean(x - y, axis=axis),
            paired=True,
            vectorized=True,
            n_resamples=2000,
            method="BCa",
            random_state=np.random.default_rng(7),
        ).confidence_interval
        assert (row.bca_low, row.bca_high) == pytest.approx((boot.low, boot.high))
        assert row.bca_low <= row.mean_diff <= row.bca_high
    assert table.loc["Binomial", "decision"] == "MS better"
    assert table.loc["BinLifted", "decision"] == "BinLifted better"
    lifted = table.loc["LiftedStruct*"]
    assert (
        lifted.p_holm > 0.05
        and lifted.decision == f"no difference larger than {lifted.detectable:.1f} detectable"
    )
    # 5 seeds: Wilcoxon's floor 0.0625 cannot reach 0.05 / 3, so it is left out and said once
    assert table["p_wilcoxon"].isna().all() and result.wilcoxon_omitted
    assert result.wilcoxon_note == (
        "Wilcoxon signed-rank omitted: with 5 seeds its smallest possible p-value, 0.062, "
        "cannot reach 0.05/3 = 0.017."
    )


def test_decisions_near_the_threshold_are_marked():
    assert stats.NEAR_THRESHOLD == (0.01, 0.1)
    assert [stats.near_threshold(p) for p in (0.005, 0.01, 0.031, 0.05, 0.099, 0.1, 0.151, math.nan)] == [
        False,
        False,
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    # MS - A: 1, 0.2, 1.5, 0.6, 1.1 (Holm p 0.017: "MS better", but near); MS - B: about 10 (far from it)
    block = pd.DataFrame(
        {"MS": [50.0, 51, 52, 53, 54], "A": [49.0, 50.8, 50.5, 52.4, 52.9], "B": [40.0, 41, 42, 43, 44.5]}
    )
    table = stats.planned_comparisons(block, n_resamples=500).table.set_index("b")
    assert table.loc["A", "p_holm"] == pytest.approx(0.0167, abs=1e-4)
    assert table.loc["A", "decision"] == "MS better" and table.loc["A", "near_threshold"]
    assert table.loc["B", "decision"] == "MS better" and not table.loc["B", "near_threshold"]


def test_planned_comparisons_keeps_wilcoxon_where_it_can_reach_significance():
    rng = np.random.default_rng(3)
    block = pd.DataFrame({"MS": 50 + rng.normal(size=8), "Binomial": 48 + rng.normal(size=8)})
    result = stats.planned_comparisons(block, n_resamples=500)
    row = result.table.iloc[0]
    assert not result.wilcoxon_omitted and result.wilcoxon_note == ""
    assert row.p_wilcoxon == pytest.approx(sps.wilcoxon(block["MS"] - block["Binomial"]).pvalue)
    assert row.p_wilcoxon_holm == pytest.approx(row.p_wilcoxon)  # one comparison: Holm changes nothing


def test_planned_comparisons_all_pairs_and_edge_cases():
    result = stats.planned_comparisons(BLOCK, all_pairs=True, n_resamples=500)
    assert result.comparisons == 6
    assert list(zip(result.table.a, result.table.b, strict=True))[:3] == [
        ("MS", "Binomial"),
        ("MS", "LiftedStruct*"),
        ("MS", "BinLifted"),
    ]
    assert result.table["detectable"].iloc[1] == pytest.approx(
        stats.detectable_difference(result.table["sd_diff"].iloc[1], 5, comparisons=6)
    )
    with pytest.raises(ValueError, match="control 'Triplet'"):
        stats.planned_comparisons(BLOCK, control="Triplet")
    sparse = pd.DataFrame(
        {"MS": [1.0, 2.0, 3.0], "Binomial": [0.5, math.nan, math.nan], "Same": [1.0, 2.0, 3.0]}
    )
    out = stats.planned_comparisons(sparse, n_resamples=500).table.set_index("b")
    assert out.loc["Binomial", "decision"] == "no test (1 common seed)" and math.isnan(
        out.loc["Binomial", "p"]
    )
    same = out.loc["Same"]  # identical columns: zero-width intervals, D = 0
    assert (same.bca_low, same.bca_high, same.p, same.detectable) == (0.0, 0.0, 1.0, 0.0)
    assert same.decision == "no difference larger than 0 detectable"


# --- ranking ---------------------------------------------------------------------------------------


def test_nemenyi_critical_difference_demsar_table():
    # Demšar (2006) Table 5a, alpha 0.05: q = 2.343 (k = 3), 3.031 (k = 8); CD = q sqrt(k (k+1) / (6 N))
    assert stats.nemenyi_critical_difference(3, 2) == pytest.approx(2.343, abs=1e-3)
    assert stats.nemenyi_critical_difference(8, 10) == pytest.approx(3.031 * math.sqrt(72 / 60), abs=1e-3)
    with pytest.raises(ValueError, match="k >= 2"):
        stats.nemenyi_critical_difference(1, 5)


def test_friedman_ranking_by_hand_and_scikit_posthocs():
    block = pd.DataFrame({"a": [1.0, 2.0, 9.0], "b": [3.0, 4.0, 2.0], "c": [5.0, 6.0, 7.0]})
    ranking = stats.friedman_ranking(block)
    # higher is better: ranks per seed (c, b, a) = (1, 2, 3), (1, 2, 3), (2, 3, 1)
    assert ranking.ranks.to_dict() == pytest.approx({"c": 4 / 3, "b": 7 / 3, "a": 7 / 3})
    assert list(ranking.ranks.index) == ["c", "a", "b"]  # best first, ties in column order
    assert ranking.friedman == stats.friedman_test(block)
    expected = scikit_posthocs.posthoc_nemenyi_friedman(block).loc[ranking.ranks.index, ranking.ranks.index]
    assert ranking.pvalues.to_numpy() == pytest.approx(expected.to_numpy())
    assert ranking.critical_difference == pytest.approx(2.343 * math.sqrt(12 / 18), abs=1e-3)
    conover = stats.friedman_ranking(block, posthoc="conover")
    expected = scikit_posthocs.posthoc_conover_friedman(block, p_adjust="holm")
    assert (
        conover.pvalues.loc["a", "c"] == pytest.approx(expected.loc["a", "c"])
        and conover.posthoc == "conover"
    )
    lower = stats.friedman_ranking(block, higher_is_better=False)
    assert lower.ranks["c"] == pytest.approx(8 / 3)


def test_friedman_ranking_nemenyi_agrees_with_its_critical_difference():
    rng = np.random.default_rng(11)
    block = pd.DataFrame(rng.normal(size=(10, 6)) + np.linspace(0, 2, 6), columns=list("ABCDEF"))
    ranking = stats.friedman_ranking(block)
    for a in ranking.ranks.index:
        for b in ranking.ranks.index:
            if a != b and abs(abs(ranking.ranks[a] - ranking.ranks[b]) - ranking.critical_difference) > 1e-6:
                gap = abs(ranking.ranks[a] - ranking.ranks[b])
                assert (ranking.pvalues.loc[a, b] < 0.05) == (gap > ranking.critical_difference)


def test_friedman_ranking_edge_cases_and_the_diagram_takes_it():
    tied = stats.friedman_ranking(
        pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 2.0], "c": [1.0, 2.0]}), posthoc="conover"
    )
    assert (tied.pvalues.to_numpy() == 1.0).all() and tied.ranks.to_dict() == {"a": 2.0, "b": 2.0, "c": 2.0}
    two = stats.friedman_ranking(pd.DataFrame({"a": [1.0, 2.0], "b": [2.0, 3.0]}))
    assert "at least 3" in two.friedman.note and two.pvalues.isna().all().all()
    assert math.isnan(two.critical_difference) and two.ranks.to_dict() == {"b": 1.0, "a": 2.0}
    empty = stats.friedman_ranking(pd.DataFrame({"a": [math.nan], "b": [1.0], "c": [2.0]}))
    assert empty.ranks.isna().all() and list(empty.ranks.index) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="posthoc"):
        stats.friedman_ranking(BLOCK, posthoc="tukey")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranking = stats.friedman_ranking(BLOCK)
    figure, axes = plt.subplots()
    try:
        drawn = scikit_posthocs.critical_difference_diagram(
            ranking.ranks, ranking.pvalues, cd=ranking.critical_difference, ax=axes
        )
        assert drawn  # the library drew the markers and crossbars from our structures
    finally:
        plt.close(figure)


# ------------------------------------------------------------------ a run against a committed reference run


def _runs(values: dict[str, list[float]]) -> pd.DataFrame:
    """Tidy runs: one row per (row, seed)."""
    return pd.DataFrame(
        [{"row": row, "seed": s, "value": v} for row, vals in values.items() for s, v in enumerate(vals)]
    )


def test_reference_agreement_is_welch_with_holm():
    ours = _runs(
        {"MS": [48.0, 49.5, 47.0, 50.0], "Binomial": [46.0, 46.5, 45.5, 47.0], "only ours": [1.0, 2.0]}
    )
    reference = _runs(
        {"MS": [48.5, 49.0, 48.0], "Binomial": [40.0, 40.5, 39.5], "only reference": [3.0, 4.0]}
    )
    out = stats.reference_agreement(ours, reference, margin=1.0).set_index("row")
    assert list(out.index) == ["Binomial", "MS"]  # keys both runs have
    welch = sps.ttest_ind([48.0, 49.5, 47.0, 50.0], [48.5, 49.0, 48.0], equal_var=False)
    interval = welch.confidence_interval(0.95)
    ms = out.loc["MS"]
    assert (ms.n, ms.n_reference) == (4, 3) and ms["diff"] == pytest.approx(48.625 - 48.5)
    assert ms.p == pytest.approx(welch.pvalue) and ms.df == pytest.approx(welch.df)
    assert (ms.ci_low, ms.ci_high) == pytest.approx((interval.low, interval.high))
    # by hand: Welch-Satterthwaite degrees of freedom from the two variances
    v1, v2 = np.var([48.0, 49.5, 47.0, 50.0], ddof=1) / 4, np.var([48.5, 49.0, 48.0], ddof=1) / 3
    assert ms.df == pytest.approx((v1 + v2) ** 2 / (v1**2 / 3 + v2**2 / 2))
    assert out.p_holm.to_numpy() == pytest.approx(multipletests(out.p.to_numpy(), method="holm")[1])
    # equivalence within a margin of 1 point: statsmodels' TOST with Welch's variances, Holm
    tost = ttost_ind([48.0, 49.5, 47.0, 50.0], [48.5, 49.0, 48.0], -1.0, 1.0, usevar="unequal")[0]
    assert ms.margin == 1.0 and ms.p_equivalence == pytest.approx(tost)
    assert out.p_equivalence_holm.to_numpy() == pytest.approx(
        multipletests(out.p_equivalence.to_numpy(), method="holm")[1]
    )
    # the smallest margin shown at Holm's first level, 0.05 / 2: |diff| + t(1 - 0.025, df) * se
    se = math.sqrt(v1 + v2)
    assert ms.smallest_margin == pytest.approx(0.125 + sps.t.ppf(1 - 0.05 / 2, ms.df) * se)
    assert ms.smallest_margin > 1.0  # which is why 1 point cannot be shown here
    # MS: no difference found, but 4 and 3 noisy seeds cannot show it within 1 point either
    assert ms.p_holm > 0.05 and ms.p_equivalence_holm > 0.05 and ms.verdict == stats.UNDECIDED
    assert out.loc["Binomial", "verdict"] == stats.DIFFERS


def test_reference_agreement_tells_agreeing_noisy_and_different_rows_apart():
    rng = np.random.default_rng(11)
    noise = rng.normal(size=(4, 10))
    noise = (noise - noise.mean(axis=1, keepdims=True)) / noise.std(axis=1, ddof=1, keepdims=True)  # SD 1
    ours = _runs({"precise": list(50 + 0.2 * noise[0]), "noisy": list(50 + 8 * noise[1])})
    ours = pd.concat([ours, _runs({"shifted": list(53 + 0.2 * noise[2])})], ignore_index=True)
    reference = _runs(
        {
            "precise": list(50 + 0.2 * noise[3]),
            "noisy": list(50 + 8 * noise[3]),
            "shifted": list(50 + 0.2 * noise[3]),
        }
    )
    out = stats.reference_agreement(ours, reference, margin=1.0).set_index("row")
    # equal means, small SD: within +-1 point, shown
    assert out.loc["precise", "verdict"] == stats.AGREES and out.loc["precise", "p_equivalence_holm"] < 0.001
    # equal means, huge SD: no difference found, and none excluded either
    noisy = out.loc["noisy"]
    assert noisy.verdict == stats.UNDECIDED and noisy.p_holm > 0.05 and noisy.p_equivalence_holm > 0.05
    assert out.loc["precise", "smallest_margin"] < 1.0 < out.loc["noisy", "smallest_margin"]
    # shifted by 3 points with small SD: a difference, far outside the margin
    shifted = out.loc["shifted"]
    assert shifted.verdict == stats.DIFFERS and shifted.p_holm < 0.001 and shifted.p_equivalence > 0.5
    # a wider margin makes the shifted row agree: the verdict is always about the margin asked for
    assert stats.reference_agreement(ours, reference, margin=4.0).set_index("row").loc[
        "shifted", "verdict"
    ] == (stats.AGREES)
    with pytest.raises(ValueError, match="margin must be a positive number"):
        stats.reference_agreement(ours, reference, margin=0.0)


def test_reference_agreement_edge_cases():
    ours = _runs({"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0], "c": [5.0]})
    reference = _runs({"a": [1.0, 1.0], "b": [3.0, 3.0, 3.0], "c": [5.0, 6.0]})
    out = stats.reference_agreement(ours, reference, margin=1.0).set_index("row")
    assert (out.loc["a", "p"], out.loc["a", "verdict"]) == (1.0, stats.AGREES)  # no spread, equal: exact
    assert (out.loc["b", "p"], out.loc["b", "t"], out.loc["b", "verdict"]) == (0.0, -math.inf, stats.DIFFERS)
    assert (out.loc["a", "p_equivalence"], out.loc["b", "p_equivalence"]) == (0.0, 1.0)  # |diff| 1: not < 1
    assert (out.loc["a", "smallest_margin"], out.loc["b", "smallest_margin"]) == (0.0, 1.0)
    assert math.isnan(out.loc["c", "smallest_margin"])
    assert out.loc["c", "verdict"] == stats.NO_AGREEMENT_TEST and math.isnan(out.loc["c", "p_holm"])
    assert math.isnan(out.loc["c", "ci_low"]) and out.loc["c", "diff"] == pytest.approx(-0.5)
    empty = stats.reference_agreement(ours, _runs({"z": [1.0, 2.0]}))
    assert empty.empty and "verdict" in empty.columns
