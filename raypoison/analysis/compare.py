"""Differences between two attacks of one dataset, or between two datasets (two configs).

Two attacks of one suite are compared *paired*: their trials with the same index share a setup
(target, bases) and each victim's training seed, so the pairs (scenario, trial, victim) differ
only by the attack. The trial is the unit: a trial's difference is the mean over its victims of
(first − second), the interval is a paired bootstrap over trials (seeded), and the test is the
exact sign test on the trials whose difference is not 0 (with one victim per trial that is the
exact McNemar test on the discordant pairs). Two datasets are compared cell by cell
(scenario, attack, role) as independent samples, with Newcombe's hybrid score interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raypoison.analysis.report import outcomes, with_role_all
from raypoison.analysis.stats import bootstrap_interval, mcnemar_exact, newcombe_difference


def compare_attacks(df: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """Per scenario and role: pairs, both rates, their difference with a 95% paired bootstrap
    interval, and the McNemar p-value."""
    done = outcomes(df)
    for label in (first, second):
        if label not in set(done["attack"]):
            known = ", ".join(sorted(set(done["attack"])))
            raise ValueError(f"no completed trials of attack {label!r} (attacks: {known})")
    keys = ["scenario", "trial", "victim", "role"]
    a = done[done["attack"] == first][[*keys, "success"]]
    b = done[done["attack"] == second][[*keys, "success"]]
    pairs = with_role_all(a.merge(b, on=keys, suffixes=("_a", "_b")))
    out = []
    for (scenario, role), g in pairs.groupby(["scenario", "role"], sort=True):
        x, y = g["success_a"].astype(bool).to_numpy(), g["success_b"].astype(bool).to_numpy()
        per_trial = pd.Series(x.astype(float) - y.astype(float)).groupby(
            g["trial"].to_numpy()).mean().to_numpy()
        low, high = bootstrap_interval(np.mean, per_trial)
        wins, losses = int((per_trial > 0).sum()), int((per_trial < 0).sum())
        out.append({"scenario": scenario, "role": role, "pairs": len(g),
                    "trials": len(per_trial), f"rate_{first}": x.mean(),
                    f"rate_{second}": y.mean(), "difference": float(per_trial.mean()),
                    "low": low, "high": high, "only_first": wins, "only_second": losses,
                    "p_mcnemar": mcnemar_exact(wins, losses),
                    "method": "paired bootstrap over trials; exact sign test on trials"})
    return pd.DataFrame(out)


def compare_datasets(df: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """Per (scenario, attack, role) present in both: rates and their difference (this minus the
    other) with Newcombe's 95% interval."""
    def cells(frame):
        grouped = with_role_all(outcomes(frame)).groupby(["scenario", "attack", "role"])["success"]
        return grouped.agg(n="count", successes="sum").reset_index()

    merged = cells(df).merge(cells(other), on=["scenario", "attack", "role"],
                             suffixes=("", "_other"))
    rows = []
    for r in merged.itertuples(index=False):
        d, low, high = newcombe_difference(int(r.successes), int(r.n), int(r.successes_other),
                                           int(r.n_other))
        rows.append({"scenario": r.scenario, "attack": r.attack, "role": r.role, "n": r.n,
                     "rate": r.successes / r.n, "n_other": r.n_other,
                     "rate_other": r.successes_other / r.n_other, "difference": d, "low": low,
                     "high": high})
    return pd.DataFrame(rows)
