"""Rows no run of raypoison writes: left out of the report, and said so.

Parquet keeps a file's types but not its meaning. A part edited by hand or written by another
tool can hold rows with a share outside [0, 1], a missing key, a negative trial index, an
unknown role or status, or a protocol version no release wrote (``v3-beta``). Pooled as they
are, they give a mean outside its own interval, a cell that silently loses rows (a null victim
collapses two rows into one key) or a scenario whose real rows are set aside as older. The report
reads such rows as malformed: it leaves them out of every table and lists, by reason, how many it
left out.
"""

from __future__ import annotations

import pandas as pd

from raypoison.store.rows import STATUS_FAILED, STATUS_OK, STATUS_REJECTED

# columns that are shares of something, so in [0, 1] wherever set
SHARES = ("clean_accuracy", "attack_success_rate", "poisons_fit", "clean_accuracy_repaired",
          "attack_success_rate_repaired", "flag_precision", "flag_recall", "flag_auc")
KEYS = ("trial_id", "scenario", "attack", "victim", "status")
ROLES = ("white-box", "black-box")
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_REJECTED)


def reasons(df: pd.DataFrame) -> pd.Series:
    """Per row, why it is malformed (the first reason found), or None."""
    out = pd.Series([None] * len(df), index=df.index, dtype=object)

    def mark(mask: pd.Series, reason: str) -> None:
        out.loc[mask & out.isna()] = reason

    for key in KEYS:
        if key in df.columns:
            values = df[key]
            mark(values.isna() | values.astype(str).str.strip().eq(""), f"{key} missing")
    if "status" in df.columns:
        mark(df["status"].notna() & ~df["status"].isin(STATUSES), "unknown status")
    if "role" in df.columns:
        mark(df["status"].eq(STATUS_OK) & ~df["role"].isin(ROLES), "role missing or unknown")
    if "protocol_version" in df.columns:  # every version raypoison wrote is a whole number
        version = df["protocol_version"]
        mark(version.notna() & ~version.astype(str).str.fullmatch(r"[0-9]+"),
             "protocol_version not a whole number")
    if "trial" in df.columns:
        mark(df["trial"].notna() & (df["trial"] < 0), "negative trial index")
    for column in SHARES:
        if column in df.columns:
            values = pd.to_numeric(df[column], errors="coerce")
            mark(values.notna() & ((values < 0) | (values > 1)), f"{column} outside [0, 1]")
    return out


def split_malformed(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``df`` without its malformed rows, and a table of how many were left out for each
    reason (empty when none were)."""
    why = reasons(df)
    bad = why.notna()
    counts = (why[bad].value_counts().rename_axis("reason").reset_index(name="rows")
              if bad.any() else pd.DataFrame(columns=["reason", "rows"]))
    return df[~bad], counts


__all__ = ["SHARES", "reasons", "split_malformed"]
