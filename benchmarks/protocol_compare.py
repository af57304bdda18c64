"""Old against new protocol on the same trials: per scenario and attack, each version's success
rate with its 95% Wilson interval, and the paired difference (new minus old) over the trials both
ran, with a 95% paired bootstrap interval and the exact McNemar test. ``--diagnostics`` adds, per
version on the same pairs, the medians that say why a rate moved: the attack's final loss, the
share of poisons the victim fits to their (base) label, the target's margin (its base-class
logit minus its largest other logit; > 0 is a success) and the crafting seconds, with the mean paired
change of the margin and its 95% bootstrap interval (a finer measure than the success flags).

Trials of the two versions pair by (scenario, attack label, trial index, victim): the setup
(target, bases) and each victim's training seed depend on the scenario's seed and the index, not
on the protocol version, so a pair differs only by what the version changed in the attack.

A pair is a pair only on one pre-trained extractor. Outputs of both versions made on another
extractor (a new machine pre-trains it again, and the weights need not agree to the bit) join
with ``--also OLD NEW``: trials pair within each pair of outputs, and a trial counts once, in the
first pair of outputs that holds it under both versions.

    .venv/bin/python benchmarks/protocol_compare.py OLD_RESULTS NEW_RESULTS \
        [--also OLD2 NEW2 ...] [--markdown] [--diagnostics]
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


Outputs = list[tuple[pd.DataFrame, pd.DataFrame]]


def paired(outputs: Outputs, columns: list[str]) -> pd.DataFrame:
    """The trials both versions ran, with ``columns`` of each (suffixes ``_old``, ``_new``), from
    each (old, new) pair of outputs in turn; a trial an earlier pair holds is not taken again."""
    found = [outcomes(old)[[*KEYS, *columns]].merge(outcomes(new)[[*KEYS, *columns]], on=KEYS,
                                                    suffixes=("_old", "_new"))
             for old, new in outputs]
    return pd.concat(found, ignore_index=True).drop_duplicates(subset=KEYS, keep="first")


def compare(pairs: pd.DataFrame) -> pd.DataFrame:
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


DIAGNOSTICS = {"attack_loss_final": "final loss", "poisons_fit": "poisons fit",
               "target_margin": "target margin", "seconds_craft": "crafting s"}


def diagnostics(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and attack, over the trials both versions ran: each version's medians of
    :data:`DIAGNOSTICS` (old → new) and the mean paired change of the target margin."""
    rows = []
    for (scenario, attack), g in pairs.groupby(["scenario", "attack"], sort=True):
        row = {"scenario": scenario, "attack": attack, "pairs": len(g)}
        for column, name in DIAGNOSTICS.items():
            old_m, new_m = g[f"{column}_old"].median(), g[f"{column}_new"].median()
            row[name] = "" if pd.isna(old_m) and pd.isna(new_m) else f"{old_m:.3g} → {new_m:.3g}"
        d = (g["target_margin_new"] - g["target_margin_old"]).dropna().to_numpy(dtype=float)
        if len(d):
            low, high = bootstrap_interval(np.mean, d)
            row["margin change [95%]"] = f"{d.mean():+.2f} [{low:+.2f}, {high:+.2f}]"
        rows.append(row)
    return pd.DataFrame(rows)


def show(table: pd.DataFrame, markdown: bool) -> None:
    if not markdown:
        print(table.to_string(index=False))
        return
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--also", nargs=2, action="append", default=[], metavar=("OLD", "NEW"),
                        help="another pair of outputs, both versions on another extractor")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--diagnostics", action="store_true",
                        help="also the medians that say why a rate moved")
    args = parser.parse_args()
    outputs = [(load(old), load(new)) for old, new in [(args.old, args.new), *args.also]]
    pairs = paired(outputs, ["success", *DIAGNOSTICS])
    table = compare(pairs)
    if table.empty:
        raise SystemExit("no trial ran under both versions")
    show(table, args.markdown)
    if args.diagnostics:
        print()
        show(diagnostics(pairs), args.markdown)


if __name__ == "__main__":
    main()
