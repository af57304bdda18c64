"""Tables of a results dataset: success rates with n and a 95% interval per cell.

A cell pools the outcomes of its rows: for the black-box role that averages the black-box victims
the way the benchmark's tables do (two victims × 100 trials = 200 outcomes). Only rows with status
``ok`` and a success value count; failed and rejected trials are counted separately.

Outcomes of one trial (its victims share the poisons and the target) are not independent, so a
cell with more than one outcome per trial gets a cluster-robust interval with the trial as the
unit (:func:`~raypoison.stats.clustered_wilson`: the Wilson interval at the effective sample size
of the cluster-robust variance). Where a Witches' Brew pool crafts the trials on a few shared
models, the crafting model is the unit. ``method`` says which interval each cell has, and
``n_effective`` the effective number of independent outcomes. The comparison with the paper's
published rate is a two-sample test that counts the paper's own sampling error (100 outcomes a
cell, 200 for black-box, 300 for from-scratch ``all``): ``differs`` is true where p < 0.05.
"""

from __future__ import annotations

import pandas as pd

from raypoison.analysis.stats import INTERVALS, clustered_wilson, mean_interval, two_sample_p
from raypoison.store.rows import NO_DEFENSE, STATUS_OK

# Outcomes behind each published cell: 100 trials; black-box pools two victims, from-scratch
# "all" three (PROTOCOL.md §1)
PUBLISHED_OUTCOMES = {"white-box": 100, "black-box": 200, "all": 300}

# Success rates (%) published in "Just How Toxic is Data Poisoning?" (PROTOCOL.md §1), by the
# benchmark's scenario name, attack and role; from-scratch numbers average all victims ("all").
PUBLISHED = {
    "cifar10-transfer": {
        "feature_collision": {"white-box": 22.0, "black-box": 7.0},
        "convex_polytope": {"white-box": 33.0, "black-box": 7.0},
        "bullseye_polytope": {"white-box": 85.0, "black-box": 8.5},
        "clean_label_backdoor": {"white-box": 5.0, "black-box": 6.5},
        "hidden_trigger_backdoor": {"white-box": 10.0, "black-box": 9.5},
    },
    "cifar10-scratch": {
        "feature_collision": {"all": 1.33}, "convex_polytope": {"all": 0.67},
        "bullseye_polytope": {"all": 2.33}, "witches_brew": {"all": 26.0},
        "clean_label_backdoor": {"all": 1.00}, "hidden_trigger_backdoor": {"all": 2.67},
    },
    "tinyimagenet-transfer": {
        "feature_collision": {"white-box": 49.0, "black-box": 2.0},
        "convex_polytope": {"white-box": 14.0, "black-box": 1.0},
        "bullseye_polytope": {"white-box": 100.0, "black-box": 10.5},
        "clean_label_backdoor": {"white-box": 3.0, "black-box": 1.0},
        "hidden_trigger_backdoor": {"white-box": 3.0, "black-box": 0.5},
    },
    "tinyimagenet-scratch": {
        "feature_collision": {"all": 4.0}, "convex_polytope": {"all": 0.0},
        "bullseye_polytope": {"all": 44.0}, "witches_brew": {"all": 32.0},
        "clean_label_backdoor": {"all": 0.0}, "hidden_trigger_backdoor": {"all": 0.0},
    },
}


def _version_key(version: object) -> tuple[int, object]:
    """Versions in order: none (a row without one) first, then text no raypoison writes (such as
    ``v3-beta``, from an edited file: it never hides the real rows), then numbers."""
    text = str(version)
    if not text:
        return (-1, "")
    return (1, int(text)) if text.isdigit() else (0, text)


def current_protocol(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``df`` with, per scenario, only the rows of its newest ``protocol_version``, and a table of
    what was left out (scenario, protocol_version, rows, newest). A protocol bump changes trial
    ids, so a rerun writes new rows beside the old ones; pooled, a trial would count twice and
    results of two protocols would mix. To read older rows, filter the Parquet yourself."""
    columns = ["scenario", "protocol_version", "rows", "newest"]
    if df.empty or "protocol_version" not in df.columns:
        return df, pd.DataFrame(columns=columns)
    version = df["protocol_version"].astype("string").fillna("")
    scenario = df["scenario"].astype(str)  # a categorical from Parquet groups its empty levels
    newest = version.groupby(scenario).transform(lambda v: max(v.unique(), key=_version_key))
    keep = (version == newest).to_numpy()
    dropped = pd.DataFrame({"scenario": scenario[~keep], "protocol_version": version[~keep],
                            "newest": newest[~keep]})
    left_out = (dropped.groupby(["scenario", "protocol_version", "newest"]).size()
                .rename("rows").reset_index()[columns])
    return df[keep], left_out


def outcomes(df: pd.DataFrame) -> pd.DataFrame:
    """The completed outcomes of undefended models, one per trial and victim (a defense's rows
    repeat the undefended model's outcome)."""
    done = df[(df["status"] == STATUS_OK) & df["success"].notna()]
    if "defense" in done.columns:
        done = done[done["defense"].fillna(NO_DEFENSE) == NO_DEFENSE]
    return done


def with_role_all(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus a copy of its rows as role ``all`` when it holds more than one role."""
    if frame["role"].nunique() > 1:
        return pd.concat([frame, frame.assign(role="all")])
    return frame


def cluster_of(cell: pd.DataFrame) -> tuple[pd.Series, str]:
    """The independent unit of a cell's outcomes and its name: the crafting model where a pool of
    models each crafted several of the cell's trials (Witches' Brew's shared pool), else the
    trial."""
    if "crafting_model" in cell.columns:
        models = cell["crafting_model"].fillna("")
        per_model = cell.assign(_m=models).groupby("_m")["trial_id"].nunique()
        if len(per_model) > 1 and (per_model > 1).all() and not models.str.startswith("fresh").any():
            return models, "crafting models"
    return cell["trial_id"], "trials"


def cell_interval(cell: pd.DataFrame, interval: str) -> dict:
    """``low``, ``high``, ``method`` and ``n_effective`` of one cell's success rate."""
    units, unit_name = cluster_of(cell)
    per_unit = cell["success"].astype(bool).groupby(units.to_numpy()).agg(["sum", "count"])
    n, successes = int(per_unit["count"].sum()), int(per_unit["sum"].sum())
    if (per_unit["count"] == 1).all():
        low, high = INTERVALS[interval](successes, n)
        return {"low": low, "high": high, "method": interval, "n_effective": float(n)}
    low, high, n_eff = clustered_wilson(per_unit["sum"].to_numpy(), per_unit["count"].to_numpy())
    return {"low": low, "high": high, "method": f"cluster-robust wilson ({unit_name})",
            "n_effective": n_eff}


def success_table(df: pd.DataFrame, *, interval: str = "wilson",
                  per_victim: bool = False) -> pd.DataFrame:
    """Cells per scenario, attack and role (and victim); every scenario also gets role ``all``,
    pooling its victims, which is how the paper reports from-scratch results. ``published`` is
    the paper's number where there is one, ``published_p`` the two-sample p-value of ours
    against it and ``differs`` whether that is below 0.05. For backdoors (and controls with a
    trigger), ``asr`` is the mean attack success rate over the cell's trials (each trial's
    victims averaged first, as they share its poisons; the crafting model where that is the
    unit) with a Student t interval over them (``asr_low``, ``asr_high``; none for one)."""
    keys = ["scenario", "attack", "role"] + (["victim"] if per_victim else [])
    done = outcomes(df)
    if done.empty:
        return pd.DataFrame(columns=[*keys, "n", "successes", "rate", "low", "high", "method"])
    if not per_victim:
        done = with_role_all(done)
    cells = []
    for key, cell in done.groupby(keys, sort=True):
        n, successes = len(cell), int(cell["success"].astype(bool).sum())
        row = dict(zip(keys, key, strict=True))
        row.update(n=n, successes=successes, rate=successes / n, **cell_interval(cell, interval))
        if "attack_success_rate" in cell.columns and cell["attack_success_rate"].notna().any():
            units, _ = cluster_of(cell)  # a trial's victims share its poisons: one value each
            per_unit = cell["attack_success_rate"].astype(float).groupby(units.to_numpy()).mean()
            row["asr"], row["asr_low"], row["asr_high"] = mean_interval(per_unit,
                                                                        bounds=(0.0, 1.0))
        cells.append(row)
    grouped = pd.DataFrame(cells)
    if "asr" in grouped.columns and grouped["asr"].isna().all():
        grouped = grouped.drop(columns=["asr", "asr_low", "asr_high"])
    names = dict(zip(df["attack"], df.get("attack_name", df["attack"]), strict=True))
    grouped["published"] = [
        PUBLISHED.get(row.scenario, {}).get(names.get(row.attack, row.attack), {}).get(row.role)
        for row in grouped.itertuples()]
    grouped["published_p"] = [
        None if pd.isna(p) else two_sample_p(row.rate, row.n_effective, p / 100,
                                             PUBLISHED_OUTCOMES.get(row.role, 100))
        for p, row in zip(grouped["published"], grouped.itertuples(), strict=True)]
    grouped["differs"] = [None if pd.isna(q) else bool(q < 0.05) for q in grouped["published_p"]]
    return grouped


def status_table(df: pd.DataFrame) -> pd.DataFrame:
    """Row counts per status, for each scenario and attack (failures are visible, not hidden);
    with defenses, per defense too."""
    if df.empty:
        return pd.DataFrame()
    if "defense" in df.columns and df["defense"].nunique() > 1:
        return df.pivot_table(index=["scenario", "attack", "defense"], columns="status",
                              values="trial_id", aggfunc="count", fill_value=0).reset_index()
    return df.pivot_table(index=["scenario", "attack"], columns="status", values="trial_id",
                          aggfunc="count", fill_value=0).reset_index()


def to_markdown(table: pd.DataFrame, interval: str) -> str:
    keys = [c for c in ("scenario", "attack", "role", "victim") if c in table.columns]
    compare = "published" in table.columns and table["published"].notna().any()
    backdoor = "asr" in table.columns and table["asr"].notna().any()
    header = [*keys, "n", "success % (95%)", "interval"] + (["published %"] if compare else []) \
        + (["attack success rate % (mean, 95% t)"] if backdoor else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        cell = f"{100 * row.rate:.1f} [{100 * row.low:.1f}, {100 * row.high:.1f}]"
        method = row.method if row.method == interval else f"{row.method}, n_eff {row.n_effective:.0f}"
        cells = [*(str(getattr(row, k)) for k in keys), str(row.n), cell, method]
        if compare:
            cells.append("" if pd.isna(row.published) else
                         f"{row.published:g}" + (" (differs, p < 0.05)" if row.differs else ""))
        if backdoor:
            bounds = "" if pd.isna(row.asr_low) else (
                f" [{100 * row.asr_low:.1f}, {100 * row.asr_high:.1f}]")
            cells.append("" if pd.isna(row.asr) else f"{100 * row.asr:.1f}{bounds}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
