"""Tables of a results dataset: success rates with n and a 95% interval per cell.

A cell pools the outcomes of its rows: for the black-box role that averages the black-box victims
the way the benchmark's tables do (two victims × 100 trials = 200 outcomes). Only rows with status
``ok`` and a success value count; failed and rejected trials are counted separately.
"""

from __future__ import annotations

import pandas as pd

from raypoison.rows import STATUS_OK
from raypoison.stats import INTERVALS


def success_table(df: pd.DataFrame, *, interval: str = "wilson",
                  per_victim: bool = False) -> pd.DataFrame:
    keys = ["scenario", "attack", "role"] + (["victim"] if per_victim else [])
    done = df[(df["status"] == STATUS_OK) & df["success"].notna()]
    if done.empty:
        return pd.DataFrame(columns=[*keys, "n", "successes", "rate", "low", "high"])
    grouped = done.groupby(keys, sort=True)["success"].agg(n="count", successes="sum")
    grouped = grouped.reset_index()
    grouped["successes"] = grouped["successes"].astype(int)
    grouped["rate"] = grouped["successes"] / grouped["n"]
    bounds = [INTERVALS[interval](int(s), int(n))
              for s, n in zip(grouped["successes"], grouped["n"], strict=True)]
    grouped["low"] = [b[0] for b in bounds]
    grouped["high"] = [b[1] for b in bounds]
    return grouped


def status_table(df: pd.DataFrame) -> pd.DataFrame:
    """Row counts per status, for each scenario and attack (failures are visible, not hidden)."""
    if df.empty:
        return pd.DataFrame()
    return df.pivot_table(index=["scenario", "attack"], columns="status", values="trial_id",
                          aggfunc="count", fill_value=0).reset_index()


def to_markdown(table: pd.DataFrame, interval: str) -> str:
    keys = [c for c in ("scenario", "attack", "role", "victim") if c in table.columns]
    header = [*keys, "n", f"success % (95% {interval})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        cell = f"{100 * row.rate:.1f} [{100 * row.low:.1f}, {100 * row.high:.1f}]"
        lines.append("| " + " | ".join([*(str(getattr(row, k)) for k in keys), str(row.n), cell])
                     + " |")
    return "\n".join(lines)
