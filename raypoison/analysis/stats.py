"""Confidence intervals: binomial ones for success rates, Student's t for means over a few models,
Newcombe's score interval for a ROC AUC, and the percentile bootstrap (for paired comparisons
over many trials in ``benchmarks/`` scripts; the report uses none).

Why not the bootstrap everywhere: a defense's mean is over a handful of models (four seeds in the
trade-off runs), and the percentile bootstrap of n values covers about as far as their range, so at
n = 4 its nominal 95% interval covers the true mean far less often, and at n = 1 it is a point. An
AUC of 4 attacked models against 4 controls that separate perfectly bootstraps to [1, 1]. The t
interval is exact for normal values at any n >= 2, and Newcombe's interval stays inside [0, 1] and
keeps a width at 0 and 1 (``tests/test_stats.py`` measures both coverages)."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike


def wilson(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval; well behaved near 0 and 1, where success rates of attacks live."""
    if n == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p
             + (n - i) * log_q for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _bisect(below: Callable[[float], bool], low: float, high: float, steps: int = 100) -> float:
    """The point between ``low`` (where ``below`` holds) and ``high`` (where it does not) at
    which ``below`` stops holding, by bisection."""
    for _ in range(steps):
        mid = (low + high) / 2
        if below(mid):
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _solve(f, target: float) -> float:
    """The p in [0, 1] where the decreasing function f crosses target (bisection)."""
    return _bisect(lambda p: f(p) > target, 0.0, 1.0, steps=60)


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (conservative) interval: the p at which observing ``successes`` sits in a tail."""
    if n == 0:
        return (math.nan, math.nan)
    alpha = 1 - confidence
    low = 0.0 if successes == 0 else 1 - _solve(
        lambda q: _binomial_cdf(n - successes, n, q), alpha / 2)
    high = 1.0 if successes == n else _solve(
        lambda p: _binomial_cdf(successes, n, p), alpha / 2)
    return (low, high)


INTERVALS = {"wilson": wilson, "clopper-pearson": clopper_pearson}


def roc_auc(positives: ArrayLike, negatives: ArrayLike) -> float:
    """Area under the ROC curve: P(a positive scores above a negative), ties counting half
    (the Mann-Whitney statistic). NaN when either side is empty."""
    pos, neg = np.asarray(positives, dtype=float), np.asarray(negatives, dtype=float)
    pos, neg = pos[~np.isnan(pos)], neg[~np.isnan(neg)]
    if not len(pos) or not len(neg):
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


BOOTSTRAP_SEED = 20231
BOOTSTRAP_RESAMPLES = 2000


def bootstrap_interval(statistic: Callable[..., float], *samples: ArrayLike, confidence: float = 0.95,
                       resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)``, each sample resampled with
    replacement on its own (a fixed seed, so a report is reproducible). NaN if a sample is empty."""
    arrays = [np.asarray(s, dtype=float) for s in samples]
    arrays = [a[~np.isnan(a)] for a in arrays]
    if any(len(a) == 0 for a in arrays):
        return (math.nan, math.nan)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    values = [statistic(*(a[rng.integers(0, len(a), len(a))] for a in arrays))
              for _ in range(resamples)]
    alpha = (1 - confidence) / 2
    return (float(np.nanquantile(values, alpha)), float(np.nanquantile(values, 1 - alpha)))


def student_t_cdf_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with an integer ``df`` >= 1, in closed form (Abramowitz and
    Stegun 26.7.3-4: a finite series in the angle atan(t / sqrt(df)))."""
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    term, total = 1.0, 1.0
    if df % 2 == 0:  # sin θ · (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + …), df/2 terms
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return math.sin(theta) * total
    if df == 1:
        return 2 * theta / math.pi
    # (2/π)(θ + sin θ cos θ (1 + 2/3 cos²θ + 2·4/(3·5) cos⁴θ + …)), (df - 1)/2 terms
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)


@lru_cache(maxsize=256)
def student_t_quantile(confidence: float, df: int) -> float:
    """The t with P(|T| <= t) = ``confidence`` (the two-sided critical value), by bisection."""
    high = 1.0
    while student_t_cdf_two_sided(high, df) < confidence:
        high *= 2
    return _bisect(lambda t: student_t_cdf_two_sided(t, df) < confidence, 0.0, high)


def mean_interval(values: ArrayLike, confidence: float = 0.95,
                  bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """Mean of ``values`` with its Student t interval, clipped to ``bounds`` (the range the
    quantity can take: [0, 1] for a rate). One value has a mean and no interval (NaN bounds).

    Values that all agree give the t interval no width, a claim of certainty from two models.
    Where they sit at an end of ``bounds`` (two detectors that both found none of the poisons),
    they get the interval that n equal draws allow (:func:`_all_equal_interval`); elsewhere,
    or without bounds, no interval, as one value. This is a step: values that differ a little
    keep their (narrow) t interval, which assumes roughly normal values."""
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    if not len(array):
        return (math.nan, math.nan, math.nan)
    mean = float(array.mean())
    if len(array) < 2:
        return (mean, math.nan, math.nan)
    if np.ptp(array) <= 1e-12 * max(1.0, abs(mean)):  # all equal, but for float rounding
        if bounds is None or min(abs(mean - b) for b in bounds) > 1e-12:  # not at an end
            return (mean, math.nan, math.nan)
        return (mean, *_all_equal_interval(mean, len(array), confidence, bounds))
    half = student_t_quantile(confidence, len(array) - 1) * float(
        array.std(ddof=1)) / math.sqrt(len(array))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return (mean, low, high)


def _all_equal_interval(value: float, n: int, confidence: float,
                        bounds: tuple[float, float]) -> tuple[float, float]:
    """An interval for the mean of a quantity inside ``bounds`` of which all ``n`` draws came out
    equal to ``value``. If a draw differs from ``value`` with probability q, n equal draws have
    probability (1 - q)^n, so q <= q̄ = 1 - ((1 - confidence)/2)^(1/n) at the usual two-sided
    level (the upper Clopper-Pearson bound of 0 of n), and the mean lies in
    [value - q̄(value - low), value + q̄(high - value)]: at an end of the range, the
    Clopper-Pearson interval of 0 of n itself (0 of 2 models: [0, 0.84])."""
    q = clopper_pearson(0, n, confidence)[1]
    return (value - q * (value - bounds[0]), value + q * (bounds[1] - value))


SMALL_AUC_SIDE = 5  # up to this many models on a side, the AUC interval uses the variance bound


def _auc_variance(theta: float, m: int, n: int) -> float:
    """Hanley and McNeil's variance of an AUC at ``theta`` with Newcombe's substitution of
    (m + n)/2 - 1 for both m - 1 and n - 1 (his method 5)."""
    star = (m + n) / 2 - 1
    return theta * (1 - theta) / (m * n) * (
        1 + star * (1 - theta) / (2 - theta) + star * theta / (1 + theta))


def auc_interval(positives: ArrayLike, negatives: ArrayLike, confidence: float = 0.95,
                 small_side: int = SMALL_AUC_SIDE) -> tuple[float, float, float]:
    """ROC AUC of ``positives`` against ``negatives`` with Newcombe's score interval (Stat Med
    2006, 25:559, method 5): the thetas where (theta - AUC)^2 = z^2 V(theta), V the variance
    above. Inside [0, 1], and wider than a point at AUC 0 and 1. NaN where a side is empty.

    With at most ``small_side`` models on a side, V is instead Birnbaum and Klose's bound on any
    AUC estimate's variance, theta(1 - theta)/min(m, n), which is never below Newcombe's:
    Newcombe's variance covers 0.5 only 90% of the time at 3 vs 3 (every ranking enumerated;
    perfect separation, exact p = 0.10, gave [0.501, 1]) and a true 0.9 at 2 vs 2 in 90% of
    draws (``benchmarks/interval_coverage.py --small``)."""
    pos, neg = np.asarray(positives, dtype=float), np.asarray(negatives, dtype=float)
    pos, neg = pos[~np.isnan(pos)], neg[~np.isnan(neg)]
    auc = roc_auc(pos, neg)
    if math.isnan(auc):
        return (math.nan, math.nan, math.nan)
    z2 = NormalDist().inv_cdf(0.5 + confidence / 2) ** 2
    m, n = len(pos), len(neg)
    small = min(m, n) <= small_side

    def variance(theta: float) -> float:
        return theta * (1 - theta) / min(m, n) if small else _auc_variance(theta, m, n)

    def outside(theta: float) -> bool:
        return (theta - auc) ** 2 > z2 * variance(theta)

    low = _bisect(outside, 0.0, auc) if outside(0.0) else 0.0
    high = _bisect(lambda t: not outside(t), auc, 1.0) if outside(1.0) else 1.0
    return (auc, low, high)


def newcombe_difference(s1: float, n1: float, s2: float, n2: float, confidence: float = 0.95
                        ) -> tuple[float, float, float]:
    """Difference of two independent proportions, s1/n1 - s2/n2, with Newcombe's hybrid score
    interval (his method 10, built from the two Wilson intervals); counts may be effective
    (non-integer) sizes."""
    if n1 == 0 or n2 == 0:
        return (math.nan, math.nan, math.nan)
    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson(s1, n1, confidence)
    l2, u2 = wilson(s2, n2, confidence)
    d = p1 - p2
    return (d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar test for paired outcomes: the p-value of the discordant pairs'
    split under "both are equally likely to win" (a sign test)."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    return min(1.0, 2 * _binomial_cdf(min(only_first, only_second), n, 0.5))


def effective_size(successes: np.ndarray, sizes: np.ndarray) -> float:
    """The effective number of independent outcomes of a pooled rate whose outcomes come in
    clusters (``successes[c]`` of ``sizes[c]`` in cluster ``c``): ``p(1 − p) / Var(p)`` with the
    cluster-robust variance ``Σ_c (s_c − m_c p)² / n²`` (Kish's design effect). It is the number
    of clusters when every cluster's outcomes agree, the number of outcomes when they are
    independent, and never more than that. With no variation (p = 0 or 1) the rate carries no
    information about within-cluster correlation; the number of clusters is used, the
    conservative choice."""
    successes, sizes = np.asarray(successes, dtype=float), np.asarray(sizes, dtype=float)
    n = sizes.sum()
    if n == 0:
        return 0.0
    p = successes.sum() / n
    variance = float(((successes - sizes * p) ** 2).sum()) / n ** 2
    if p in (0.0, 1.0) or variance <= 0:
        return float(len(sizes))
    return float(min(n, p * (1 - p) / variance))


def clustered_wilson(successes: np.ndarray, sizes: np.ndarray, confidence: float = 0.95
                     ) -> tuple[float, float, float]:
    """Cluster-robust Wilson interval of a pooled rate: the Wilson score interval of the pooled
    rate at the :func:`effective_size`; returns (low, high, effective size)."""
    n_eff = effective_size(successes, sizes)
    total = float(np.sum(sizes))
    if total == 0:
        return (math.nan, math.nan, 0.0)
    p = float(np.sum(successes)) / total
    low, high = wilson(p * n_eff, n_eff, confidence)
    return (low, high, n_eff)


def two_sample_p(p1: float, n1: float, p2: float, n2: float) -> float:
    """Two-sided p-value of the difference of two independent proportions (pooled z-test), for
    comparing a rate measured here (at its effective size) with a published one (at the paper's
    number of outcomes)."""
    if n1 <= 0 or n2 <= 0:
        return math.nan
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if p1 == p2 else 0.0
    return 2 * (1 - NormalDist().cdf(abs(p1 - p2) / se))
