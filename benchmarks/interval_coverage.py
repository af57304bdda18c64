"""How often the report's 95% intervals cover the truth at the sizes defenses are run at.

Draws normal values (a mean of n models) and two normal samples whose true AUC is 0.8 (n
attacked models against n controls), and counts how often each interval contains the true
value: the Student t and Newcombe intervals the report uses, and the percentile bootstrap it
used before 2026-12-04.

    .venv/bin/python benchmarks/interval_coverage.py [--repeats 1000] [--sizes 4 8 16]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"coverage of nominal 95% intervals, {args.repeats} draws each")
    print("| n | " + " | ".join(METHODS) + " |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        figures = coverage(n, args.repeats, args.resamples, rng)
        print(f"| {n} | " + " | ".join(f"{100 * v:.1f}%" for v in figures.values()) + " |")


if __name__ == "__main__":
    main()
