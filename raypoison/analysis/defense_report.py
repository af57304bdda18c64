"""Tables of the defenses ("Pick your Poison"): per scenario, attack and defense, the models'
clean accuracy and attack success rate before and after repair, detection ROC AUC against the
no-attack control, and the data-side detectors' precision and recall — each with a 95% interval.

Cells are per victim: detection scores of different architectures are not on one scale. Means
get Student t intervals over models (a handful of seeds is the usual size; one model has no
interval); a detection AUC compares the detection scores of an attack's models (positives) with
those of the scenario's control models of the same victim (negatives: trials of the ``none``
attack, clean models trained with the same seeds; two controls of one suite train the same
models, so each trial counts once), with Newcombe's score interval.
Only rows with status ``ok`` count.
"""

from __future__ import annotations

import hashlib
import math

import pandas as pd

from raypoison.analysis.stats import auc_interval, mean_interval
from raypoison.store.rows import NO_DEFENSE, STATUS_OK

CONTROL = "none"  # the attack whose models are the clean population
RATE, LOSS = (0.0, 1.0), (-1.0, 1.0)
MEANS = {  # column -> the range its mean's interval is clipped to (None: unbounded)
    "clean_accuracy": RATE, "attack_success_rate": RATE, "clean_accuracy_repaired": RATE,
    "attack_success_rate_repaired": RATE, "clean_accuracy_loss": LOSS, "detection_score": None,
    "flag_precision": RATE, "flag_recall": RATE, "flag_auc": RATE}


def defended_rows(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty or "defense" not in df.columns:
        return df.iloc[0:0]
    return df[(df["status"] == STATUS_OK) & (df["defense"] != NO_DEFENSE)
              & df["defense"].notna()]


def separate_variants(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of one defense label run with different parameters (a changed default, two
    variants) are different defenses: such labels get a short digest of their parameters,
    ``pivotal_tuning [3fa2c1]``, so that a table never pools them."""
    if rows.empty or "defense_params" not in rows.columns:
        return rows
    params = rows["defense_params"].fillna("")
    variants = params.groupby(rows["defense"]).nunique()
    several = set(variants[variants > 1].index)
    if not several:
        return rows
    digest = params.map(lambda p: hashlib.sha256(p.encode()).hexdigest()[:6])
    label = rows["defense"].where(~rows["defense"].isin(several),
                                  rows["defense"] + " [" + digest + "]")
    return rows.assign(defense=label)


def poison_count(rows: pd.DataFrame) -> int:
    """The x of a trade-off: the attack's poison count; 0 for the control (its "poisons" are the
    unchanged bases)."""
    counts = rows["poisons"].dropna()
    if rows["attack_name"].iloc[0] == CONTROL or counts.empty:
        return 0
    return int(counts.median())


def defense_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (scenario, attack, defense, victim) with ``n`` models, means with
    ``_low``/``_high`` bounds and ``_n``, the models each mean rests on (fewer than ``n`` where
    a value is undefined on some), and ``detection_auc`` with its bounds."""
    rows = separate_variants(defended_rows(df))
    if rows.empty:
        return pd.DataFrame()
    # the control's models have no poisons to find: precision is undefined there
    rows = rows.assign(flag_precision=rows["flag_precision"].where(rows["attack_name"] != CONTROL),
                       # paired: each model's own accuracy before minus after its repair
                       clean_accuracy_loss=rows["clean_accuracy"].astype(float)
                       - rows["clean_accuracy_repaired"].astype(float))
    control = rows[rows["attack_name"] == CONTROL].drop_duplicates(
        ["scenario", "defense", "victim", "trial"])
    out = []
    for (scenario, attack, defense, victim), group in rows.groupby(
            ["scenario", "attack", "defense", "victim"], sort=True):
        record = {"scenario": scenario, "attack": attack, "victim": victim,
                  "attack_name": group["attack_name"].iloc[0], "poisons": poison_count(group),
                  "defense": defense, "defense_name": group["defense_name"].iloc[0],
                  "n": len(group),
                  "trusted": (int(group["trusted_size"].median())
                              if "trusted_size" in group.columns
                              and group["trusted_size"].notna().any() else None)}
        for column, bounds in MEANS.items():
            mean, low, high = mean_interval(group[column].astype(float), bounds=bounds)
            record.update({column: mean, f"{column}_low": low, f"{column}_high": high,
                           f"{column}_n": int(group[column].notna().sum())})
        negatives = control[(control["scenario"] == scenario) & (control["defense"] == defense)
                            & (control["victim"] == victim)]["detection_score"].astype(
                                float).dropna()
        positives = group["detection_score"].astype(float).dropna()
        auc, low, high = math.nan, math.nan, math.nan
        if record["attack_name"] != CONTROL and len(positives) and len(negatives):
            auc, low, high = auc_interval(positives, negatives)
        record.update(detection_auc=auc, detection_auc_low=low, detection_auc_high=high,
                      detection_auc_n=len(positives) if not math.isnan(auc) else 0,
                      controls=len(negatives))
        out.append(record)
    return pd.DataFrame(out).sort_values(["scenario", "victim", "attack_name", "poisons",
                                          "defense"]).reset_index(drop=True)


POOLED = "all models"  # the attack column of a repair's pooled row


def pooled_repair_cost(df: pd.DataFrame) -> pd.DataFrame:
    """Each repair's clean-accuracy loss over every model of a scenario and victim, whatever the
    attack (the control's models included): "what does this repair cost a model", the headline
    of "Pick your Poison", which a table per poison count leaves at a model or two a cell.

    The models of one trial index share their training seed (initialization and data order) under
    every attack, so they are not independent draws: each seed's models are averaged first and
    the Student t interval is taken over seeds (``seeds``; ``models`` says how many were
    pooled). Rows without ``seed_train`` are grouped by ``trial``. One row per (scenario,
    victim, defense) with ``clean_accuracy`` (before) and ``clean_accuracy_loss``, each with
    ``_low``/``_high`` bounds; only defenses that repair."""
    rows = separate_variants(defended_rows(df))
    if rows.empty or rows["clean_accuracy_repaired"].isna().all():
        return pd.DataFrame()
    rows = rows[rows["clean_accuracy_repaired"].notna()]
    seed = (rows["seed_train"].astype("string").fillna("trial " + rows["trial"].astype(str))
            if "seed_train" in rows.columns else "trial " + rows["trial"].astype(str))
    rows = rows.assign(seed=seed, clean_accuracy_loss=rows["clean_accuracy"].astype(float)
                       - rows["clean_accuracy_repaired"].astype(float))
    out = []
    for (scenario, victim, defense), group in rows.groupby(["scenario", "victim", "defense"],
                                                           sort=True):
        by_seed = group.groupby("seed")[["clean_accuracy", "clean_accuracy_loss"]].mean()
        record = {"scenario": scenario, "victim": victim, "defense": defense,
                  "seeds": len(by_seed), "models": len(group)}
        for column, bounds in (("clean_accuracy", RATE), ("clean_accuracy_loss", LOSS)):
            mean, low, high = mean_interval(by_seed[column].astype(float), bounds=bounds)
            record.update({column: mean, f"{column}_low": low, f"{column}_high": high})
        out.append(record)
    return pd.DataFrame(out)


def _cell(row, column: str, percent: bool = True) -> str:
    value = getattr(row, column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    scale = 100 if percent else 1
    low, high = getattr(row, f"{column}_low"), getattr(row, f"{column}_high")
    digits = 1 if percent else 2
    return f"{scale * value:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def to_markdown(table: pd.DataFrame) -> str:
    header = ["scenario", "victim", "attack", "poisons", "defense", "n", "clean acc %", "ASR %",
              "clean acc after %", "ASR after %", "detection AUC", "flag precision %",
              "flag recall %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        cells = [row.scenario, row.victim, row.attack, str(row.poisons), row.defense, str(row.n),
                 _cell(row, "clean_accuracy"), _cell(row, "attack_success_rate"),
                 _cell(row, "clean_accuracy_repaired"), _cell(row, "attack_success_rate_repaired"),
                 _cell(row, "detection_auc", percent=False), _cell(row, "flag_precision"),
                 _cell(row, "flag_recall")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
