"""Old against new protocol on the same trials: per scenario and attack, each version's success
rate with its 95% Wilson interval, and the paired difference (new minus old) over the trials both
ran, with a 95% paired bootstrap interval and the exact McNemar test.

Trials of the two versions pair by (scenario, attack label, trial index, victim): the setup
(target, bases) and each victim's training seed depend on the scenario's seed and the index, not
on the protocol version, so a pair differs only by what the version changed in the attack.

    .venv/bin/python benchmarks/protocol_compare.py OLD_RESULTS NEW_RESULTS [--markdown]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from raypoison.analysis.report import outcomes
from raypoison.analysis.stats import bootstrap_interval, mcnemar_exact, wilson
from raypoison.store.results import load

KEYS = ["scenario", "attack", "trial", "victim"]


def cell(successes: int, n: int) -> str:
    low, high = wilson(successes, n)
    return f"{100 * successes / n:.1f} [{100 * low:.1f}, {100 * high:.1f}] (n = {n})"


def compare(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    a, b = outcomes(old)[[*KEYS, "success"]], outcomes(new)[[*KEYS, "success"]]
    pairs = a.merge(b, on=KEYS, suffixes=("_old", "_new"))
    rows = []
    for (scenario, attack), g in pairs.groupby(["scenario", "attack"], sort=True):
        x = g["success_old"].astype(bool).to_numpy()
        y = g["success_new"].astype(bool).to_numpy()
        d = y.astype(float) - x.astype(float)
        low, high = bootstrap_interval(np.mean, d)
        gained, lost = int((y & ~x).sum()), int((x & ~y).sum())
        rows.append({
            "scenario": scenario, "attack": attack, "pairs": len(g),
            "old": cell(int(x.sum()), len(x)), "new": cell(int(y.sum()), len(y)),
            "new - old": f"{100 * d.mean():+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]",
            "gained / lost": f"{gained} / {lost}",
            "McNemar p": f"{mcnemar_exact(gained, lost):.3g}",
        })
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    table = compare(load(args.old), load(args.new))
    if table.empty:
        raise SystemExit("no trial ran under both versions")
    if not args.markdown:
        print(table.to_string(index=False))
        return
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
