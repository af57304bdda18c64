"""Tables of a results dataset: success rates with n and a 95% interval per cell.

A cell pools the outcomes of its rows: for the black-box role that averages the black-box victims
the way the benchmark's tables do (two victims × 100 trials = 200 outcomes). Only rows with status
``ok`` and a success value count; failed and rejected trials are counted separately.
"""

from __future__ import annotations

import pandas as pd

from raypoison.rows import NO_DEFENSE, STATUS_OK
from raypoison.stats import INTERVALS, mean_interval

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


def success_table(df: pd.DataFrame, *, interval: str = "wilson",
                  per_victim: bool = False) -> pd.DataFrame:
    """Cells per scenario, attack and role (and victim); every scenario also gets role ``all``,
    pooling its victims, which is how the paper reports from-scratch results. ``published`` is
    the paper's number where there is one, and ``outside`` flags it lying outside the interval.
    For backdoors (and controls with a trigger), ``asr`` is the mean attack success rate of the
    cell's victims with a bootstrap interval (``asr_low``, ``asr_high``)."""
    keys = ["scenario", "attack", "role"] + (["victim"] if per_victim else [])
    done = outcomes(df)
    if done.empty:
        return pd.DataFrame(columns=[*keys, "n", "successes", "rate", "low", "high"])
    if not per_victim:
        done = with_role_all(done)
    grouped = done.groupby(keys, sort=True)["success"].agg(n="count", successes="sum")
    grouped = grouped.reset_index()
    grouped["successes"] = grouped["successes"].astype(int)
    grouped["rate"] = grouped["successes"] / grouped["n"]
    bounds = [INTERVALS[interval](int(s), int(n))
              for s, n in zip(grouped["successes"], grouped["n"], strict=True)]
    grouped["low"] = [b[0] for b in bounds]
    grouped["high"] = [b[1] for b in bounds]
    if "attack_success_rate" in done.columns and done["attack_success_rate"].notna().any():
        asr = done.groupby(keys, sort=True)["attack_success_rate"].agg(
            lambda v: mean_interval(v.astype(float))).reset_index(drop=True)
        grouped["asr"] = [a[0] for a in asr]
        grouped["asr_low"] = [a[1] for a in asr]
        grouped["asr_high"] = [a[2] for a in asr]
    names = dict(zip(df["attack"], df.get("attack_name", df["attack"]), strict=True))
    grouped["published"] = [
        PUBLISHED.get(row.scenario, {}).get(names.get(row.attack, row.attack), {}).get(row.role)
        for row in grouped.itertuples()]
    grouped["outside"] = [
        None if pd.isna(p) else not (row.low * 100 - 1e-9 <= p <= row.high * 100 + 1e-9)
        for p, row in zip(grouped["published"], grouped.itertuples(), strict=True)]
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
    header = [*keys, "n", f"success % (95% {interval})"] + (["published %"] if compare else []) \
        + (["attack success rate % (mean, 95% bootstrap)"] if backdoor else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        cell = f"{100 * row.rate:.1f} [{100 * row.low:.1f}, {100 * row.high:.1f}]"
        cells = [*(str(getattr(row, k)) for k in keys), str(row.n), cell]
        if compare:
            cells.append("" if pd.isna(row.published) else
                         f"{row.published:g}" + (" (outside)" if row.outside else ""))
        if backdoor:
            cells.append("" if pd.isna(row.asr) else
                         f"{100 * row.asr:.1f} [{100 * row.asr_low:.1f}, {100 * row.asr_high:.1f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
