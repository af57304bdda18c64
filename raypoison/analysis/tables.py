"""The report's tables as a reader sees them: cells formatted the way the paper prints them.

Analysis tables (:mod:`raypoison.analysis.report`, :mod:`raypoison.analysis.compare`,
:mod:`raypoison.analysis.defense_report`) keep numbers; the functions here turn them into frames of
strings, one cell per published number: a rate is ``22.0 [14.9, 31.2]`` (percent, one decimal,
the 95% interval in the same cell), a missing value is an empty cell (never ``None`` or ``nan``).
:func:`markdown_table` and :func:`html_table` render such a frame.

Two layouts of the success table: ``long`` (one row per scenario, attack and role) and
``table3``, the layout of Table 3 of "Just How Toxic is Data Poisoning?": a row per attack, a
column per scenario and role (white-box, black-box; ``all`` for from-scratch scenarios), with the
paper's number beside ours. ``auto`` picks ``table3`` when a scenario has the benchmark's name.
"""

from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd

from raypoison.analysis.compare import ALL_ATTACKS
from raypoison.analysis.defense_report import POOLED
from raypoison.analysis.report import PUBLISHED

LAYOUTS = ("auto", "table3", "long")
# the paper's row order; other attacks follow by name, the control last
ATTACK_ORDER = ["feature_collision", "convex_polytope", "bullseye_polytope", "witches_brew",
                "clean_label_backdoor", "hidden_trigger_backdoor"]
ROLE_ORDER = ["white-box", "black-box", "all"]
DIFFERS_MARK = "≠"


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def text(value: Any) -> str:
    """A plain cell: empty when missing, integers without a decimal point."""
    if is_missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def percent(value: Any, digits: int = 1) -> str:
    return "" if is_missing(value) else f"{100 * float(value):.{digits}f}"


def interval_cell(value: Any, low: Any, high: Any, *, scale: float = 100.0, digits: int = 1,
                  signed: bool = False) -> str:
    """``value [low, high]`` (×``scale``); the value alone where the interval is missing."""
    if is_missing(value):
        return ""
    sign = "+" if signed else ""
    main = f"{scale * float(value):{sign}.{digits}f}"
    if is_missing(low) or is_missing(high):
        return main
    return f"{main} [{scale * float(low):.{digits}f}, {scale * float(high):.{digits}f}]"


def p_value(p: Any) -> str:
    if is_missing(p):
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _published_cell(row: Any) -> str:
    if is_missing(getattr(row, "published", None)):
        return ""
    mark = f" {DIFFERS_MARK}" if getattr(row, "differs", None) is True else ""
    return f"{row.published:.1f}{mark}"


def _method(row: Any, interval: str) -> str:
    if row.method == interval:
        return row.method
    return f"{row.method}, n_eff {row.n_effective:.0f}"


def success_long(table: pd.DataFrame, interval: str) -> pd.DataFrame:
    """One row per cell of :func:`raypoison.report.success_table`."""
    keys = [c for c in ("scenario", "attack", "role", "victim") if c in table.columns]
    published = "published" in table.columns and table["published"].notna().any()
    backdoor = "asr" in table.columns and table["asr"].notna().any()
    if "role" in table.columns:  # white-box, black-box, then the pooled "all"
        order = {r: i for i, r in enumerate(ROLE_ORDER)}
        table = table.assign(_r=table["role"].map(order).fillna(len(order))).sort_values(
            [k for k in keys if k != "role"][:2] + ["_r"], kind="stable")
    rows = []
    for row in table.itertuples(index=False):
        cells = {k: text(getattr(row, k)) for k in keys}
        cells["n"] = text(row.n)
        cells["success % [95%]"] = interval_cell(row.rate, row.low, row.high)
        cells["interval"] = _method(row, interval)
        if published:
            cells["paper %"] = _published_cell(row)
            cells["p vs paper"] = p_value(row.published_p)
        if backdoor:
            cells["attack success rate % [95% t]"] = interval_cell(
                row.asr, row.asr_low, row.asr_high)
        rows.append(cells)
    return pd.DataFrame(rows)


def uses_table3(table: pd.DataFrame, layout: str) -> bool:
    if layout == "auto":
        return bool(set(table.get("scenario", pd.Series(dtype=str))) & set(PUBLISHED))
    return layout == "table3"


def _attack_sort_key(name: str, label: str) -> tuple[int, str]:
    if name == "none":
        return (len(ATTACK_ORDER) + 1, label)
    return (ATTACK_ORDER.index(name) if name in ATTACK_ORDER else len(ATTACK_ORDER), label)


def success_table3(table: pd.DataFrame, names: dict[str, str] | None = None) -> pd.DataFrame:
    """Rows: attacks (the paper's order, the control last); columns: (scenario, role) pairs,
    each with ``ours`` (``rate [low, high]`` and n, with the effective number of independent
    outcomes where a trial's victims are pooled and agree) and, where the paper has the cell,
    ``paper`` (marked ``≠`` where the two-sample test says they differ). The frame's columns are
    a two-level index (``scenario role``, ``ours | paper``)."""
    names = names or {}
    if table.empty:
        return pd.DataFrame()
    roles = [r for r in ROLE_ORDER if r in set(table["role"])]
    columns = [(s, r) for s in sorted(set(table["scenario"])) for r in roles
               if ((table["scenario"] == s) & (table["role"] == r)).any()]
    # a scenario with both white- and black-box cells shows those, as the paper does
    columns = [(s, r) for s, r in columns
               if r != "all" or not ((table["scenario"] == s) & (table["role"] != "all")).any()]
    attacks = sorted(set(table["attack"]), key=lambda a: _attack_sort_key(names.get(a) or a, a))
    with_paper = {c for c in columns
                  if table[(table["scenario"] == c[0]) & (table["role"] == c[1])]
                  ["published"].notna().any()}
    out: dict[tuple[str, str], list[str]] = {}
    for scenario, role in columns:
        ours, paper = [], []
        for attack in attacks:
            cell = table[(table["scenario"] == scenario) & (table["role"] == role)
                         & (table["attack"] == attack)]
            if cell.empty:
                ours.append("")
                paper.append("")
                continue
            row = next(cell.itertuples(index=False))
            # pooled victims of one trial are not independent: say how many outcomes they make
            effective = ("" if is_missing(getattr(row, "n_effective", None))
                         or round(row.n_effective) >= row.n else f", {row.n_effective:.0f} effective")
            ours.append(f"{interval_cell(row.rate, row.low, row.high)} (n {row.n}{effective})")
            paper.append(_published_cell(row))
        out[(f"{scenario} {role}", "ours % [95%] (n)")] = ours
        if (scenario, role) in with_paper:
            out[(f"{scenario} {role}", "paper %")] = paper
    frame = pd.DataFrame(out, index=pd.Index(attacks, name="attack"))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame.reset_index()


def status_display(status: pd.DataFrame) -> pd.DataFrame:
    out = status.copy()
    out.columns = [str(c) for c in out.columns]  # no leftover "status" axis name
    return out.map(text) if not out.empty else out


def compare_display(diff: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    rows = []
    for r in diff.to_dict("records"):  # labels such as badnets-poisons50 are no identifiers
        rows.append({"scenario": r["scenario"], "role": r["role"], "pairs": text(r["pairs"]),
                     "trials": text(r["trials"]),
                     f"{first} %": percent(r[f"rate_{first}"]),
                     f"{second} %": percent(r[f"rate_{second}"]),
                     "difference, points [95%]": interval_cell(r["difference"], r["low"],
                                                               r["high"], signed=True),
                     f"only {first}": text(r["only_first"]),
                     f"only {second}": text(r["only_second"]),
                     "p (sign test)": p_value(r["p_mcnemar"])})
    return pd.DataFrame(rows)


def against_display(diff: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in diff.itertuples(index=False):
        rows.append({"scenario": r.scenario, "attack": r.attack, "role": r.role,
                     "n": text(r.n), "rate %": percent(r.rate), "n other": text(r.n_other),
                     "rate other %": percent(r.rate_other),
                     "difference, points [95% Newcombe]": interval_cell(
                         r.difference, r.low, r.high, signed=True)})
    return pd.DataFrame(rows)


SCENARIO_DISPLAY = {  # column of compare_scenarios -> (what it measures, scale, digits)
    "clean_accuracy_loss": ("clean accuracy lost, points", 100.0, 2),
    "attack_success_rate_repaired": ("attack success after repair, %", 100.0, 1),
    "detection_score": ("detection score", 1.0, 3),
    "flag_auc": ("poison detection AUC", 1.0, 3),
}


def scenarios_display(diff: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """:func:`raypoison.analysis.compare.compare_scenarios` as one row per (attack, defense,
    measure) that both scenarios measured."""
    rows = []
    for r in diff.to_dict("records"):
        n = _count(r["pairs"], "pair")
        if r["attack"] == ALL_ATTACKS:
            n += f", {_count(r['seeds'], 'seed')}"
        if not r["pairs"]:  # every twin row defended another model: say so, not nothing
            rows.append({"attack": r["attack"], "defense": r["defense"], "victim": r["victim"],
                         "measure": "no pair on the same model", "n": n, first: "",
                         second: "", "difference [95%]": "", "unpaired": text(r["unpaired"])})
            continue
        for metric, (measure, scale, digits) in SCENARIO_DISPLAY.items():
            if is_missing(r[f"{metric}_difference"]):
                continue
            rows.append({"attack": r["attack"], "defense": r["defense"], "victim": r["victim"],
                         "measure": measure, "n": n, first: f"{scale * r[f'{metric}_first']:.{digits}f}",
                         second: f"{scale * r[f'{metric}_second']:.{digits}f}",
                         "difference [95%]": interval_cell(
                             r[f"{metric}_difference"], r[f"{metric}_low"],
                             r[f"{metric}_high"], scale=scale, digits=digits, signed=True),
                         "unpaired": text(r["unpaired"])})
    return pd.DataFrame(rows)


DEFENSE_METRICS = {  # column of defense_table -> (title, scale, digits)
    "attack_success_rate_repaired": ("Attack success rate after repair, % [95%]", 100.0, 1),
    "clean_accuracy_loss": ("Clean accuracy lost by the repair, points [95%, paired]", 100.0, 1),
    "detection_auc": ("Detection ROC AUC against the control [95%]", 1.0, 2),
    "flag_recall": ("Poisons found by data-side detectors (recall), % [95%]", 100.0, 1),
    "flag_precision": ("Flagged samples that are poisons (precision), % [95%]", 100.0, 1),
    "flag_auc": ("Data-side poison detection ROC AUC [95%]", 1.0, 2),
}

# a metric's table opens with the undefended models' value it starts from: column, heading
UNDEFENDED = {"attack_success_rate_repaired": ("attack_success_rate", "no defense"),
              "clean_accuracy_loss": ("clean_accuracy", "clean accuracy before, %")}


def _counts(rows: pd.DataFrame, column: str) -> pd.Series:
    """How many models each defense's value of ``column`` rests on (a defense can run on fewer
    of a row's models, or leave a value undefined on some: precision where nothing was
    flagged); tables written before these counts existed fall back to ``n``."""
    counts = f"{column}_n"
    return (rows[counts] if counts in rows.columns else rows["n"]).astype(int)


def _models(having: pd.DataFrame, key: tuple, column: str) -> str:
    """How many models a pivot row rests on: its defenses' largest count of values; for a
    detection AUC, attacked models against control models."""
    rows = having.set_index(["scenario", "victim", "attack", "poisons"]).loc[[key]]
    n = int(_counts(rows, column).max())
    if column == "detection_auc" and "controls" in rows.columns:
        return f"{n} vs {int(rows['controls'].max())}"
    return str(n)


def _fewer(key: tuple, counts: pd.Series, most: pd.Series, controls: pd.Series | None = None,
           most_controls: pd.Series | None = None) -> str:
    """A cell's own count where it rests on fewer models than its row's ``n`` says: ``(n k)``,
    or for a detection AUC ``(k vs j)`` where either side is smaller."""
    if controls is None or most_controls is None:
        return f" (n {counts.loc[key]})" if counts.loc[key] < most.loc[key] else ""
    k, j = int(counts.loc[key]), int(controls.loc[key])
    return f" ({k} vs {j})" if k < most.loc[key] or j < most_controls.loc[key] else ""


def _pooled_rows(pooled: pd.DataFrame, heading: str) -> pd.DataFrame:
    """The clean-accuracy-loss table's closing rows: each repair over every model of the scenario
    and victim (:func:`raypoison.analysis.defense_report.pooled_repair_cost`)."""
    out = []
    for (scenario, victim), group in pooled.groupby(["scenario", "victim"], sort=True):
        # the accuracy before, from the repair that ran on the most models, as n says
        first = group.sort_values("models", ascending=False, kind="stable").iloc[0]
        models, seeds = int(group["models"].max()), int(group["seeds"].max())
        row = {"scenario": scenario, "victim": victim, "attack": POOLED, "poisons": None,
               "n": f"{_count(models, 'model')}, {_count(seeds, 'seed')}",
               heading: interval_cell(first["clean_accuracy"], first["clean_accuracy_low"],
                                      first["clean_accuracy_high"])}
        for r in group.itertuples(index=False):
            # a repair run on fewer models or seeds than the row's n says: the cell says its own
            own = (f" ({_count(int(r.models), 'model')}, {_count(int(r.seeds), 'seed')})"
                   if r.models < models or r.seeds < seeds else "")
            row[r.defense] = interval_cell(r.clean_accuracy_loss, r.clean_accuracy_loss_low,
                                           r.clean_accuracy_loss_high) + own
        out.append(row)
    return pd.DataFrame(out)


def defense_pivots(table: pd.DataFrame, pooled: pd.DataFrame | None = None
                   ) -> list[tuple[str, pd.DataFrame]]:
    """The defense table in the paper's layout: one small table per metric, rows scenario ×
    victim × attack × poison count with the number of models ``n``, a column per defense (the
    undefended value first where the metric has one); only metrics some defense reports. The
    clean-accuracy-loss table closes with ``pooled``'s rows (each repair over all models, the
    interval over seeds) where given."""
    if table.empty:
        return []
    keys = ["scenario", "victim", "attack", "poisons"]
    out = []
    for column, (title, scale, digits) in DEFENSE_METRICS.items():
        if column not in table.columns or table[column].isna().all():
            continue
        having = table[table[column].notna()]
        frame = having[keys].drop_duplicates().reset_index(drop=True)
        frame["n"] = [_models(having, k, column) for k in frame[keys].itertuples(
            index=False, name=None)]
        if column in UNDEFENDED:
            before, heading = UNDEFENDED[column]
            # from the defense that ran on the most of the row's models
            base = (having.sort_values("n", ascending=False, kind="stable")
                    .drop_duplicates(keys).set_index(keys))
            frame[heading] = [interval_cell(
                base.loc[k, before], base.loc[k, f"{before}_low"], base.loc[k, f"{before}_high"],
                scale=scale, digits=digits)
                for k in frame[keys].itertuples(index=False, name=None)]
        most = having.assign(_v=_counts(having, column)).groupby(keys)["_v"].max()
        versus = column == "detection_auc" and "controls" in having.columns
        most_controls = having.groupby(keys)["controls"].max() if versus else None
        for defense in sorted(set(having["defense"])):
            rows = having[having["defense"] == defense].set_index(keys)
            counts = _counts(rows, column)
            frame[defense] = [
                interval_cell(rows.loc[k, column], rows.loc[k, f"{column}_low"],
                              rows.loc[k, f"{column}_high"], scale=scale, digits=digits)
                + _fewer(k, counts, most, rows["controls"] if versus else None, most_controls)
                if k in rows.index else ""
                for k in frame[keys].itertuples(index=False, name=None)]
        if column == "clean_accuracy_loss" and pooled is not None and not pooled.empty:
            frame = pd.concat([frame, _pooled_rows(pooled, UNDEFENDED[column][1])],
                              ignore_index=True).fillna("")
        frame["poisons"] = frame["poisons"].map(text)
        # a scenario or victim shared by every row goes into the caption, not a column
        shared = [k for k in ("scenario", "victim") if frame[k].nunique() == 1]
        caption = title + "".join(f"; {k} {frame[k].iloc[0]}" for k in shared)
        out.append((caption, frame.drop(columns=shared)))
    return out


def markdown_table(frame: pd.DataFrame) -> str:
    """A markdown table of a frame of strings (a two-level header is joined with a space)."""
    if frame.empty:
        return "(none)"
    header = [" ".join(x for x in c if x) if isinstance(c, tuple) else str(c)
              for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(text(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def html_table(frame: pd.DataFrame) -> str:
    """An HTML table of a frame of strings; a two-level header becomes two header rows, the
    upper cells spanning their sub-columns."""
    if frame.empty:
        return "<p>(none)</p>"
    columns = list(frame.columns)
    two_level = any(isinstance(c, tuple) and len(c) == 2 and c[1] for c in columns)
    parts = ["<table><thead>"]
    if two_level:
        top: list[tuple[str, int]] = []
        for c in columns:
            name = c[0] if isinstance(c, tuple) else str(c)
            if top and top[-1][0] == name:
                top[-1] = (name, top[-1][1] + 1)
            else:
                top.append((name, 1))
        parts.append("<tr>" + "".join(f"<th colspan='{n}'>{html.escape(name)}</th>"
                                      for name, n in top) + "</tr>")
        parts.append("<tr>" + "".join(
            f"<th>{html.escape(c[1] if isinstance(c, tuple) else '')}</th>" for c in columns)
            + "</tr>")
    else:
        parts.append("<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
                     + "</tr>")
    parts.append("</thead><tbody>")
    for row in frame.itertuples(index=False):
        parts.append("<tr>" + "".join(f"<td>{html.escape(text(v))}</td>" for v in row) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
