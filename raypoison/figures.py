"""Figures of the trade-off between detectability and robustness ("Pick your Poison"), drawn from
:func:`raypoison.defense_report.defense_table`: for each scenario and attack family, against
the number of poisons (0 is the no-attack control),

1. the detection ROC AUC of each model-side detector (against the control's models);
2. the attack success rate left after each repair, with the undefended one for reference;
3. the data-side detectors' sample-level ROC AUC at finding the poisons.

Error bars are the 95% intervals of the table. matplotlib draws off-screen (the Agg backend).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from raypoison.defense_report import CONTROL


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(ax, rows: pd.DataFrame, column: str, label: str, marker: str = "o") -> bool:
    rows = rows.dropna(subset=[column]).sort_values("poisons")
    if rows.empty:
        return False
    low = (rows[column] - rows[f"{column}_low"]).clip(lower=0)
    high = (rows[f"{column}_high"] - rows[column]).clip(lower=0)
    ax.errorbar(rows["poisons"], rows[column], yerr=[low, high], marker=marker, capsize=3,
                label=label)
    return True


def tradeoff_figures(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One PNG per (scenario, victim, attack family); returns their paths."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if table.empty:
        return paths
    for (scenario, victim), in_scenario in table.groupby(["scenario", "victim"]):
        control = in_scenario[in_scenario["attack_name"] == CONTROL].drop_duplicates(
            ["defense"])
        for family, rows in in_scenario[in_scenario["attack_name"] != CONTROL].groupby(
                "attack_name"):
            rows = pd.concat([control, rows])
            fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), sharex=True)
            detect, repair, flag = axes
            drawn = [False, False, False]
            for defense, d in rows.groupby("defense"):
                drawn[0] |= _series(detect, d[d["attack_name"] != CONTROL], "detection_auc",
                                    defense)
                drawn[1] |= _series(repair, d, "attack_success_rate_repaired", defense)
                drawn[2] |= _series(flag, d[d["attack_name"] != CONTROL], "flag_auc", defense)
            undefended = rows.groupby("poisons", as_index=False).first()
            _series(repair, undefended, "attack_success_rate", "no defense", marker="s")
            titles = ["Model detection ROC AUC", "Attack success rate after repair",
                      "Poison detection ROC AUC (data-side)"]
            for ax, title, has in zip(axes, titles, drawn, strict=True):
                ax.set_title(title)
                ax.set_xlabel("poisons")
                ax.set_ylim(-0.02, 1.02)
                ax.grid(alpha=0.3)
                if has:
                    ax.legend(fontsize=7)
                else:
                    ax.text(0.5, 0.5, "no such defense", ha="center", transform=ax.transAxes)
            if rows["poisons"].max() > 0 and (rows["poisons"] > 0).sum() > 1:
                for ax in axes:
                    ax.set_xscale("symlog", linthresh=max(1, math.floor(
                        rows.loc[rows["poisons"] > 0, "poisons"].min())))
            fig.suptitle(f"{scenario}, {victim}: {family}, detectability vs robustness")
            fig.tight_layout()
            path = out_dir / f"tradeoff-{scenario}-{victim}-{family}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


SWEEPS = {"epsilon": "ε (L∞ bound)", "poisons": "poisons", "patch_size": "patch size"}


def sweep_figures(df: pd.DataFrame, out_dir: str | Path, interval: str = "wilson") -> list[Path]:
    """Success rate against each of ε, poison count and patch size that takes more than one value
    in the dataset: a line per attack family and role, pooling every row that shares the value
    (so a sweep should vary one thing at a time), with the 95% ``interval``."""
    from raypoison.report import outcomes, with_role_all
    from raypoison.stats import INTERVALS

    plt = _pyplot()
    done = outcomes(df)
    done = done[done["attack_name"] != "noop"]
    out_dir = Path(out_dir)
    paths = []
    for column, label in SWEEPS.items():
        if column not in done.columns or done[column].dropna().nunique() < 2:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (family, role), g in with_role_all(done).groupby(["attack_name", "role"]):
            cells = g.groupby(column)["success"].agg(["count", "sum"]).reset_index()
            rates = cells["sum"] / cells["count"]
            bounds = [INTERVALS[interval](int(s), int(n))
                      for s, n in zip(cells["sum"], cells["count"], strict=True)]
            ax.errorbar(cells[column], 100 * rates,
                        yerr=[100 * (rates - [b[0] for b in bounds]).clip(lower=0),
                              100 * (pd.Series([b[1] for b in bounds]) - rates).clip(lower=0)],
                        marker="o", capsize=3, label=f"{family} ({role})")
        ax.set_xlabel(label)
        ax.set_ylabel(f"success % (95% {interval})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"Success rate against {label}")
        fig.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"success-vs-{column}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
