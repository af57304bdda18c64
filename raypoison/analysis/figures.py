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

from raypoison.analysis.defense_report import CONTROL


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


def _poison_axis(axes, counts: list[float]) -> None:
    """A symmetric-log poison axis (linear up to the smallest positive count, so the control's 0
    sits beside it) ticked at the counts of the sweep only: symlog's own ticks include negative
    decades no poison count can take."""
    from matplotlib.ticker import NullLocator

    positive = [c for c in counts if c > 0]
    linthresh = max(1, math.floor(min(positive)))
    for ax in axes:
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_xlim(-0.5 * linthresh if min(counts) <= 0 else 0.7 * min(positive),
                    1.5 * max(positive))
        ax.set_xticks(counts)
        ax.set_xticklabels([f"{c:g}" for c in counts])
        ax.xaxis.set_minor_locator(NullLocator())


def tradeoff_figures(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One PNG per (scenario, victim, attack family); returns their paths."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
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
            _series(repair, undefended_points(rows), "attack_success_rate", "no defense",
                    marker="s")
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
                _poison_axis(axes, sorted(rows["poisons"].dropna().unique()))
            fig.suptitle(f"{scenario}, {victim}: {family}, detectability vs robustness")
            fig.tight_layout()
            path = out_dir / f"tradeoff-{scenario}-{victim}-{family}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def undefended_points(rows: pd.DataFrame) -> pd.DataFrame:
    """The "no defense" points of a trade-off figure: per poison count, one whole row of the
    defense table (its mean and bounds together), from the defense that ran on the most models,
    as the tables take it."""
    return (rows.sort_values("n", ascending=False, kind="stable")
            .drop_duplicates("poisons").sort_values("poisons"))


def sweep_points(rows: pd.DataFrame, column: str, interval: str = "wilson") -> pd.DataFrame:
    """One line of a sweep figure: per value of ``column``, the success rate of ``rows`` and its
    95% ``interval``, cluster-robust over trials where a value holds several victims of one
    trial (:func:`raypoison.analysis.report.cell_interval`, as in the tables)."""
    from raypoison.analysis.report import cell_interval

    out = []
    for value, cell in rows.groupby(column, sort=True):
        bounds = cell_interval(cell, interval)
        out.append({column: value, "rate": float(cell["success"].astype(bool).mean()),
                    "low": bounds["low"], "high": bounds["high"]})
    return pd.DataFrame(out)


SWEEPS = {"epsilon": "ε (L∞ bound)", "poisons": "poisons", "patch_size": "patch size"}


def sweep_figures(df: pd.DataFrame, out_dir: str | Path, interval: str = "wilson") -> list[Path]:
    """Success rate against each of ε, poison count and patch size that takes more than one value
    in the dataset: a line per attack family and role, pooling every row that shares the value
    (so a sweep should vary one thing at a time), with the 95% ``interval`` (cluster-robust over
    trials where a value holds several victims of one trial, as in the tables)."""
    from raypoison.analysis.report import outcomes, with_role_all

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
            line = sweep_points(g, column, interval)
            ax.errorbar(line[column], 100 * line["rate"],
                        yerr=[100 * (line["rate"] - line["low"]).clip(lower=0),
                              100 * (line["high"] - line["rate"]).clip(lower=0)],
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


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def forest_figures(table: pd.DataFrame, out_dir: str | Path, interval: str = "wilson"
                   ) -> list[Path]:
    """A forest plot per scenario of :func:`raypoison.report.success_table`: each attack's
    success rate (per role) with its 95% interval, the no-attack control drawn apart, and the
    paper's number as a marker where there is one."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    paths: list[Path] = []
    if table.empty:
        return paths
    for scenario, cells in table.groupby("scenario", sort=True):
        # "all" pools the other roles: drawn only where the paper reports it (from scratch)
        published = cells["published"] if "published" in cells.columns else None
        if published is not None:
            cells = cells[(cells["role"] != "all") | published.notna()]
        else:
            cells = cells[cells["role"] != "all"]
        cells = cells.sort_values(["attack", "role"], ascending=False).reset_index(drop=True)
        fig, ax = plt.subplots(figsize=(9, 1.4 + 0.38 * len(cells)))
        y = range(len(cells))
        control = cells["attack"].eq("none").to_numpy()
        rate = 100 * cells["rate"]
        err = [(rate - 100 * cells["low"]).clip(lower=0), (100 * cells["high"] - rate).clip(lower=0)]
        for mask, colour, label in ((~control, "tab:blue", f"ours (95% {interval})"),
                                    (control, "tab:gray", "no-attack control")):
            if mask.any():
                ax.errorbar(rate[mask], [i for i, m in zip(y, mask, strict=True) if m],
                            xerr=[e[mask] for e in err], fmt="o", color=colour, capsize=3,
                            label=label)
        if "published" in cells.columns and cells["published"].notna().any():
            has = cells["published"].notna().to_numpy()
            ax.scatter(cells.loc[has, "published"], [i for i, h in zip(y, has, strict=True) if h],
                       marker="D", color="tab:red", zorder=3, label="paper")
        ax.set_yticks(list(y), [f"{a} ({r}, n {n})" for a, r, n in zip(
            cells["attack"], cells["role"], cells["n"], strict=True)])
        ax.set_xlabel("success rate, % (the target classified as the base class)")
        ax.set_xlim(-2, 102)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{scenario}: success rate per attack", fontsize=10)
        fig.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"forest-{_safe(scenario)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def compare_figure(diff: pd.DataFrame, first: str, second: str, out_dir: str | Path
                   ) -> list[Path]:
    """The paired differences of :func:`raypoison.compare.compare_attacks` as a forest plot:
    ``first`` minus ``second`` in percentage points per scenario and role, with the paired t
    interval over trials and a line at 0."""
    plt = _pyplot()
    if diff.empty:
        return []
    rows = diff.sort_values(["scenario", "role"], ascending=False).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.38 * len(rows)))
    d = 100 * rows["difference"]
    err = [(d - 100 * rows["low"]).clip(lower=0), (100 * rows["high"] - d).clip(lower=0)]
    ax.errorbar(d, range(len(rows)), xerr=err, fmt="o", color="tab:blue", capsize=3,
                label="difference (95% paired t over trials)")
    ax.axvline(0, color="black", lw=0.8, label="no difference")
    reach = max(5.0, float((100 * rows[["low", "high"]].abs()).max().max()) + 2)
    ax.set_xlim(-reach, reach)  # at least ±5 points, so a null difference still reads as one
    ax.set_yticks(list(range(len(rows))), [f"{s} ({r}, {n} pairs)" for s, r, n in zip(
        rows["scenario"], rows["role"], rows["pairs"], strict=True)])
    ax.set_xlabel(f"success rate of {first} minus {second}, percentage points")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{first} against {second}, paired by trial", fontsize=10)
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"compare-{_safe(first)}-vs-{_safe(second)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
