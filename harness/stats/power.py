"""Power of the paired comparison over seeds: minimum detectable difference and seeds needed.

Both functions describe a two-sided paired t-test (one-sample t-test of the per-seed differences)
at level ``alpha / comparisons``, computed as statsmodels' ``TTestPower`` does (noncentral t; Cohen,
*Statistical Power Analysis for the Behavioral Sciences*, 1988, ch. 2) with effect size
``difference / sd`` where ``sd`` is the standard deviation of the paired differences. Dividing
``alpha`` by the number of planned comparisons is Bonferroni's level, which is also the level of the
first (strictest) step of Holm's procedure: Holm rejects everything Bonferroni rejects, so the power
computed here is a conservative bound for each comparison of a Holm-corrected family.
"""

from __future__ import annotations

import math

from scipy import optimize, stats


def _check_design(alpha: float, power: float, comparisons: int) -> float:
    """Validate the common arguments; return the per-comparison level ``alpha / comparisons``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    if int(comparisons) != comparisons or comparisons < 1:
        raise ValueError(f"comparisons must be a positive integer, got {comparisons}")
    return alpha / int(comparisons)


def _power(effect: float, n: int, level: float) -> float:
    """Power of the two-sided one-sample (paired) t-test: ``P(|T| > t_crit)``, T noncentral t.

    Same formula as statsmodels' ``TTestPower.power`` (tested to agree), evaluated with scipy's
    noncentral t directly because statsmodels returns NaN for some large effects at n = 2.
    """
    df = n - 1
    critical = stats.t.isf(level / 2, df)
    noncentrality = effect * math.sqrt(n)
    # P(T < -c) written as P(T' > c) with T' of noncentrality -delta: scipy's cdf gives NaN far in that tail
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.sf(critical, df, -noncentrality))


def _detectable_effect(n: int, level: float, power: float) -> float:
    """The effect size (difference / sd) reaching ``power``: root of statsmodels' power function.

    Solved with a bracketing root finder; statsmodels' ``TTestPower.solve_power`` gives the same
    answer from 3 seeds on (tested) but fails for 2 (it returns NaN or its bracket's bound).
    """
    high = 1.0
    while _power(high, n, level) < power:  # power rises with the effect towards 1: widen until bracketed
        high *= 2.0
    return float(optimize.brentq(lambda effect: _power(effect, n, level) - power, 0.0, high, xtol=1e-12))


def detectable_difference(
    sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8, comparisons: int = 1
) -> float:
    """Smallest true mean paired difference that a two-sided paired t-test over ``n`` seeds detects
    with probability ``power`` at level ``alpha / comparisons`` (same unit as ``sd``).

    ``sd`` is the standard deviation of the per-seed differences. ``n < 2`` (no t-test possible) ->
    ``inf``; ``sd`` NaN -> NaN; ``sd == 0`` -> 0. Example: paired SD 1.2 points, 7 comparisons,
    80% power: 10.4 points with 3 seeds, 3.4 with 5, 2.0 with 8, 1.7 with 10.
    """
    level = _check_design(alpha, power, comparisons)
    if math.isnan(sd):
        return math.nan
    if sd < 0:
        raise ValueError(f"sd must not be negative, got {sd}")
    if n < 2:
        return math.inf
    if sd == 0:
        return 0.0
    return _detectable_effect(int(n), level, power) * sd


def seeds_needed(
    difference: float, sd: float, *, alpha: float = 0.05, power: float = 0.8, comparisons: int = 1
) -> int:
    """Smallest number of seeds ``n >= 2`` at which a two-sided paired t-test at level
    ``alpha / comparisons`` detects a true mean paired difference ``difference`` with probability
    at least ``power`` (``sd``: standard deviation of the per-seed differences).

    ``sd == 0`` -> 2 (the fewest seeds a t-test takes). Raises ValueError for ``difference == 0``
    (no finite n) and for NaN or negative ``sd``.
    Example: difference 2.0, paired SD 1.2, 7 comparisons, 80% power -> 9 seeds.
    """
    level = _check_design(alpha, power, comparisons)
    if math.isnan(sd) or sd < 0:
        raise ValueError(f"sd must be a non-negative number, got {sd}")
    if difference == 0 or math.isnan(difference):
        raise ValueError(f"difference must be a non-zero number, got {difference}")
    if sd == 0:
        return 2
    effect = abs(difference) / sd
    low, high = 1, 2  # invariant: power(low) < target (or low = 1, no test) and power(high) >= target
    while _power(effect, high, level) < power:
        low, high = high, high * 2
    while high - low > 1:  # power rises with n: bisect for the first n that reaches the target
        middle = (low + high) // 2
        low, high = (low, middle) if _power(effect, middle, level) >= power else (middle, high)
    return high
