"""Confidence intervals: binomial ones for success rates, and the ROC AUC and percentile bootstrap
intervals for the defenses' scores and means."""

from __future__ import annotations

import math
from collections.abc import Callable
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


def _solve(f, target: float) -> float:
    """The p in [0, 1] where the decreasing function f crosses target (bisection)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if f(mid) > target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


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


def mean_interval(values: ArrayLike, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` with its percentile bootstrap interval."""
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    if not len(array):
        return (math.nan, math.nan, math.nan)
    low, high = bootstrap_interval(np.mean, array, confidence=confidence)
    return (float(array.mean()), low, high)


def newcombe_difference(s1: int, n1: int, s2: int, n2: int, confidence: float = 0.95
                        ) -> tuple[float, float, float]:
    """Difference of two independent proportions, s1/n1 - s2/n2, with Newcombe's hybrid score
    interval (his method 10, built from the two Wilson intervals)."""
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
