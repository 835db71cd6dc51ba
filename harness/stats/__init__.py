"""Statistics over seeds, against the paper and between losses: pure functions on numbers and tables.

Every function takes plain numbers, a tidy table (one row per run: group columns, a block column
such as ``seed``, a value column) or a block (seeds x losses) and returns numbers or a new table;
nothing is read or written. Edge cases have defined outputs instead of exceptions or warnings (each
is stated where it happens): one seed gives NaN intervals and no test, zero variance gives
zero-width intervals and exact tests, Friedman needs 3 treatments and 2 complete blocks.

- :mod:`~harness.stats.summary`: mean, SD, t confidence interval per group;
- :mod:`~harness.stats.paper`: our seeds against the paper's one run (prediction interval, TOST);
- :mod:`~harness.stats.agreement`: a run against a committed reference run (TOST and Welch per row, Holm);
- :mod:`~harness.stats.power`: minimum detectable difference and seeds needed (paired t-test);
- :mod:`~harness.stats.paired`: paired tests, Holm, planned comparisons with intervals and decisions;
- :mod:`~harness.stats.ranking`: Friedman, average ranks, post-hoc tests, critical difference, Kendall tau.
"""

from harness.stats._common import ALPHA, CONFIDENCE
from harness.stats.agreement import (
    AGREES,
    DEFAULT_AGREEMENT_MARGIN,
    DIFFERS,
    NO_AGREEMENT_TEST,
    UNDECIDED,
    reference_agreement,
)
from harness.stats.paired import (
    NEAR_THRESHOLD,
    PairedTest,
    PlannedComparisons,
    bca_interval,
    holm,
    near_threshold,
    paired_test,
    planned_comparisons,
    wilcoxon_min_p,
)
from harness.stats.paper import ABOVE, BELOW, CONSISTENT, NOT_TESTABLE, paper_verdict, prediction_interval
from harness.stats.power import detectable_difference, seeds_needed
from harness.stats.ranking import (
    FriedmanRanking,
    FriedmanTest,
    RankAgreement,
    friedman_ranking,
    friedman_test,
    nemenyi_critical_difference,
    rank_agreement,
)
from harness.stats.summary import summarize, t_interval

__all__ = [
    "ABOVE",
    "AGREES",
    "ALPHA",
    "BELOW",
    "CONFIDENCE",
    "CONSISTENT",
    "DEFAULT_AGREEMENT_MARGIN",
    "DIFFERS",
    "NEAR_THRESHOLD",
    "NOT_TESTABLE",
    "NO_AGREEMENT_TEST",
    "UNDECIDED",
    "FriedmanRanking",
    "FriedmanTest",
    "PairedTest",
    "PlannedComparisons",
    "RankAgreement",
    "bca_interval",
    "detectable_difference",
    "friedman_ranking",
    "friedman_test",
    "holm",
    "near_threshold",
    "nemenyi_critical_difference",
    "paired_test",
    "paper_verdict",
    "planned_comparisons",
    "prediction_interval",
    "rank_agreement",
    "reference_agreement",
    "seeds_needed",
    "summarize",
    "t_interval",
    "wilcoxon_min_p",
]
