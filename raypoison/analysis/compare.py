"""Differences between two attacks of one dataset, between two datasets (two configs), or
between two scenarios' defenses on the same victims.

Two attacks of one suite are compared *paired*: their trials with the same index share a setup
(target, bases) and each victim's training seed, so the pairs (scenario, trial, victim) differ
only by the attack. The trial is the unit: a trial's difference is the mean over its victims of
(first − second), the interval is Student's t over trials (a percentile bootstrap covers about
the range of a few trials: two trials that agree gave [1, 1]; differences that all agree get
:func:`~raypoison.analysis.stats.mean_interval`'s bound), and the test is the exact sign test on
the trials whose difference is not 0 (with one victim per trial that is the exact McNemar test on
the discordant pairs). Two datasets are compared cell by cell
(scenario, attack, role) as independent samples, with Newcombe's hybrid score interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raypoison.analysis.defense_report import LOSS, RATE, defended_rows, separate_variants
from raypoison.analysis.report import cell_interval, outcomes, with_role_all
from raypoison.analysis.stats import (
    mcnemar_exact,
    mean_interval,
    newcombe_difference,
)


def compare_attacks(df: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """Per scenario and role: pairs, both rates, their difference with a 95% Student t interval
    over trials, and the exact sign test's p-value."""
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
        by_trial = pd.DataFrame({"x": x.astype(float), "y": y.astype(float)}).groupby(
            g["trial"].to_numpy()).mean()  # a trial's victims averaged first, as the difference
        per_trial = (by_trial["x"] - by_trial["y"]).to_numpy()
        _, low, high = mean_interval(per_trial, bounds=(-1.0, 1.0))
        wins, losses = int((per_trial > 0).sum()), int((per_trial < 0).sum())
        out.append({"scenario": scenario, "role": role, "pairs": len(g),
                    "trials": len(per_trial), f"rate_{first}": float(by_trial["x"].mean()),
                    f"rate_{second}": float(by_trial["y"].mean()),
                    "difference": float(per_trial.mean()),
                    "low": low, "high": high, "only_first": wins, "only_second": losses,
                    "p_mcnemar": mcnemar_exact(wins, losses),
                    "method": "paired t over trials; exact sign test on trials"})
    return pd.DataFrame(out)


def compare_datasets(df: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """Per (scenario, attack, role) present in both: rates and their difference (this minus the
    other) with Newcombe's 95% interval, each side at its effective size (a trial's victims
    share its poisons: the cluster-robust count of :func:`~raypoison.analysis.report.cell_interval`,
    ``n`` outcomes where each trial has one)."""
    keys = ["scenario", "attack", "role"]

    def cells(frame):
        out = []
        for key, cell in with_role_all(outcomes(frame)).groupby(keys, sort=True):
            out.append({**dict(zip(keys, key, strict=True)), "n": len(cell),
                        "successes": int(cell["success"].astype(bool).sum()),
                        "n_effective": cell_interval(cell, "wilson")["n_effective"]})
        return pd.DataFrame(out, columns=[*keys, "n", "successes", "n_effective"])

    merged = cells(df).merge(cells(other), on=keys, suffixes=("", "_other"))
    rows = []
    for r in merged.itertuples(index=False):
        p, q = r.successes / r.n, r.successes_other / r.n_other
        d, low, high = newcombe_difference(p * r.n_effective, r.n_effective,
                                           q * r.n_effective_other, r.n_effective_other)
        rows.append({"scenario": r.scenario, "attack": r.attack, "role": r.role, "n": r.n,
                     "rate": r.successes / r.n, "n_other": r.n_other,
                     "rate_other": r.successes_other / r.n_other, "difference": d, "low": low,
                     "high": high})
    return pd.DataFrame(rows)


ALL_ATTACKS = "all attacks"  # the attack column of a defense's row over every attack
# what a defense row measures -> the range of one scenario's mean (the difference's is twice it)
SCENARIO_METRICS = {"clean_accuracy_loss": LOSS, "attack_success_rate_repaired": RATE,
                    "detection_score": None, "flag_auc": RATE}
_PAIR_KEYS = ["attack", "trial", "victim", "defense", "defense_params"]
_SAME_VICTIM = ["seed_train", "clean_accuracy", "attack_success_rate"]


def compare_scenarios(df: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """The defenses of two scenarios that train the same victims and differ only in what the
    defenses see (``trusted_from``: the trusted set's source), paired on each victim.

    A pair is one defense (label and parameters; a label run with several parameter sets is
    split as the defense tables split it) on one victim of one trial and attack in both
    scenarios; it counts only if both rows defended the very same model: equal training seed,
    clean accuracy and attack success rate before the defense (shared saved victims give that
    exactly; ``unpaired`` counts the rows whose twin row was another model, and a row with no
    pair at all still says so). Per (attack, defense, victim), each metric's mean in both and
    the mean paired difference (first minus second) with a Student t interval over pairs (one
    a trial: trials of one attack are independent). Each defense and victim also gets a row
    over every attack (``attack`` = ``ALL_ATTACKS``): the models of one trial index share their
    training seed under every attack, so the pairs' differences are averaged per seed first and
    the interval is over seeds (as the pooled repair cost is)."""
    rows = separate_variants(defended_rows(df))
    rows = rows.assign(
        defense_params=rows["defense_params"].fillna("") if "defense_params" in rows else "",
        clean_accuracy_loss=rows["clean_accuracy"].astype(float)
        - rows["clean_accuracy_repaired"].astype(float))
    sides = []
    for name in (first, second):
        side = rows[rows["scenario"] == name]
        if side.empty:
            known = ", ".join(sorted(set(rows["scenario"])))
            raise ValueError(f"no defended rows of scenario {name!r} (scenarios with defenses: "
                             f"{known or 'none'})")
        if side.duplicated(_PAIR_KEYS).any():
            raise ValueError(f"scenario {name!r} has several trials of one index and attack "
                             "(two configs under one scenario name?): its rows do not pair")
        sides.append(side[[*_PAIR_KEYS, *_SAME_VICTIM, *SCENARIO_METRICS]])
    merged = sides[0].merge(sides[1], on=_PAIR_KEYS, suffixes=("_a", "_b"))
    same = np.ones(len(merged), dtype=bool)
    for column in _SAME_VICTIM:
        a, b = merged[f"{column}_a"], merged[f"{column}_b"]
        same &= ((a == b) | (a.isna() & b.isna())).to_numpy()
    merged = merged.assign(paired=same)
    out = []
    for (attack, defense, victim), group in merged.groupby(["attack", "defense", "victim"],
                                                           sort=True):
        out.append(_scenario_record(attack, defense, victim, group, per_seed=False))
    for (defense, victim), group in merged.groupby(["defense", "victim"], sort=True):
        out.append(_scenario_record(ALL_ATTACKS, defense, victim, group, per_seed=True))
    return pd.DataFrame(out)


def _scenario_record(attack: str, defense: str, victim: str, group: pd.DataFrame,
                     per_seed: bool) -> dict:
    """One row of :func:`compare_scenarios`: ``group``'s pairs of one victim (``paired``
    marks those that defended the same model)."""
    unpaired = int((~group["paired"]).sum())
    group = group[group["paired"]]
    record: dict = {"attack": attack, "defense": defense, "victim": victim,
                    "pairs": len(group), "seeds": int(group["seed_train_a"].nunique()),
                    "unpaired": unpaired}
    for metric, bounds in SCENARIO_METRICS.items():
        a, b = group[f"{metric}_a"].astype(float), group[f"{metric}_b"].astype(float)
        both = a.notna() & b.notna()
        difference = (a - b)[both]
        if per_seed:
            seeds = group.loc[both, "seed_train_a"].to_numpy()
            difference = difference.groupby(seeds).mean()
        span = None if bounds is None else (bounds[0] - bounds[1], bounds[1] - bounds[0])
        mean, low, high = mean_interval(difference.to_numpy(), bounds=span)
        record.update({f"{metric}_first": float(a[both].mean()) if both.any() else np.nan,
                       f"{metric}_second": float(b[both].mean()) if both.any() else np.nan,
                       f"{metric}_difference": mean, f"{metric}_low": low,
                       f"{metric}_high": high})
    return record
