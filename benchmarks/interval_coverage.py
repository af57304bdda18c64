"""How often the report's 95% intervals cover the truth at the sizes defenses are run at.

Draws normal values (a mean of n models) and two normal samples whose true AUC is 0.8 (n
attacked models against n controls), and counts how often each interval contains the true
value: the Student t and Newcombe intervals the report uses, and the percentile bootstrap it
used before 2026-12-04.

    .venv/bin/python benchmarks/interval_coverage.py [--repeats 1000] [--sizes 4 8 16]

``--small`` measures the AUC interval where defenses are run today, 2 to 6 models a side: the
share of all equally likely rankings (no signal) whose interval contains 0.5, counted exactly,
and the coverage of a true AUC of 0.9, simulated; both for Newcombe's variance alone and for
the report's interval (Birnbaum and Klose's variance bound up to 5 a side).
"""

from __future__ import annotations

import argparse
import math
from statistics import NormalDist

import numpy as np

from raypoison.analysis.stats import auc_interval, bootstrap_interval, mean_interval, roc_auc

TRUE_AUC = 0.8
METHODS = ("mean, t", "mean, bootstrap", "AUC, Newcombe", "AUC, bootstrap")


def coverage(n: int, repeats: int, resamples: int, rng: np.random.Generator) -> dict[str, float]:
    shift = math.sqrt(2) * NormalDist().inv_cdf(TRUE_AUC)
    hits = dict.fromkeys(METHODS, 0)
    for _ in range(repeats):
        x = rng.normal(0, 1, n)
        _, low, high = mean_interval(x)
        hits["mean, t"] += low <= 0 <= high
        low, high = bootstrap_interval(np.mean, x, resamples=resamples)
        hits["mean, bootstrap"] += low <= 0 <= high
        pos, neg = rng.normal(shift, 1, n), rng.normal(0, 1, n)
        _, low, high = auc_interval(pos, neg)
        hits["AUC, Newcombe"] += low <= TRUE_AUC <= high
        low, high = bootstrap_interval(roc_auc, pos, neg, resamples=resamples)
        hits["AUC, bootstrap"] += low <= TRUE_AUC <= high
    return {k: v / repeats for k, v in hits.items()}


def small_sides(repeats: int, rng: np.random.Generator) -> None:
    import itertools

    from raypoison.analysis import stats

    def newcombe_only(pos, neg):
        return stats.auc_interval(pos, neg, small_side=0)

    shift = math.sqrt(2) * NormalDist().inv_cdf(0.9)
    print("| a side | null coverage, Newcombe | null coverage, report | AUC 0.9 coverage, "
          "Newcombe | AUC 0.9 coverage, report | mean width at 0.9, Newcombe / report |")
    print("|---|---|---|---|---|---|")
    for k in range(2, 7):
        null: dict[str, list[bool]] = {"newcombe": [], "report": []}
        for top in itertools.combinations(range(2 * k), k):
            pos, neg = list(top), [i for i in range(2 * k) if i not in top]
            for name, method in (("newcombe", newcombe_only), ("report", stats.auc_interval)):
                _, low, high = method(pos, neg)
                null[name].append(low <= 0.5 <= high)
        hits: dict[str, list[bool]] = {"newcombe": [], "report": []}
        width: dict[str, list[float]] = {"newcombe": [], "report": []}
        for _ in range(repeats):
            drawn_pos, drawn_neg = rng.normal(shift, 1, k), rng.normal(0, 1, k)
            for name, method in (("newcombe", newcombe_only), ("report", stats.auc_interval)):
                _, low, high = method(drawn_pos, drawn_neg)
                hits[name].append(low <= 0.9 <= high)
                width[name].append(high - low)
        print(f"| {k} | {100 * np.mean(null['newcombe']):.1f}% | {100 * np.mean(null['report']):.1f}% "
              f"| {100 * np.mean(hits['newcombe']):.1f}% | {100 * np.mean(hits['report']):.1f}% "
              f"| {np.mean(width['newcombe']):.2f} / {np.mean(width['report']):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true",
                        help="the AUC interval at 2 to 6 models a side (exact null coverage)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.small:
        print(f"AUC intervals at 2-6 models a side; AUC 0.9: {args.repeats} draws each")
        small_sides(args.repeats, rng)
        return
    print(f"coverage of nominal 95% intervals, {args.repeats} draws each")
    print("| n | " + " | ".join(METHODS) + " |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        figures = coverage(n, args.repeats, args.resamples, rng)
        print(f"| {n} | " + " | ".join(f"{100 * v:.1f}%" for v in figures.values()) + " |")


if __name__ == "__main__":
    main()
