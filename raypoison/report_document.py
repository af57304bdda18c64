"""A report as a list of sections (title, markdown, table), rendered to markdown or HTML.

:func:`assemble` gathers what ``raypoison report`` shows: the success table, the status counts,
comparisons asked for, the defenses' table, and the progress of the dataset's runs.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from raypoison import compare, defense_report, progress, report


@dataclass
class Section:
    title: str
    markdown: str
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


def _plain(table: pd.DataFrame) -> str:
    return table.to_string(index=False) if not table.empty else "(none)"


def _percent_table(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    out = table.copy()
    for c in columns:
        if c in out.columns:
            out[c] = (100 * out[c]).round(1)
    return out


def assemble(df: pd.DataFrame, uri: str, *, interval: str = "wilson", per_victim: bool = False,
             compare_attacks: tuple[str, str] | None = None,
             against: tuple[str, pd.DataFrame] | None = None) -> list[Section]:
    sections = []
    table = report.success_table(df, interval=interval, per_victim=per_victim)
    sections.append(Section(f"Success rates (95% {interval}; cluster-robust where a trial has "
                            "several outcomes)", report.to_markdown(table, interval), table))
    status = report.status_table(df)
    sections.append(Section("Rows by status", "```\n" + _plain(status) + "\n```", status))
    if compare_attacks is not None:
        first, second = compare_attacks
        diff = compare.compare_attacks(df, first, second)
        shown = _percent_table(diff, [c for c in diff.columns if c.startswith("rate_")]
                               + ["difference", "low", "high"])
        sections.append(Section(
            f"{first} minus {second} (paired by trial; % points, 95% paired bootstrap over "
            "trials; exact sign test over trials, McNemar's with one victim a trial)",
            "```\n" + _plain(shown) + "\n```", diff))
    if against is not None:
        other_uri, other = against
        diff = compare.compare_datasets(df, other)
        shown = _percent_table(diff, ["rate", "rate_other", "difference", "low", "high"])
        sections.append(Section(f"This dataset minus {other_uri} (% points, 95% Newcombe)",
                                "```\n" + _plain(shown) + "\n```", diff))
    defended = defense_report.defense_table(df)
    if not defended.empty:
        sections.append(Section("Defenses (means with 95% bootstrap intervals; detection AUC "
                                "against the control)", defense_report.to_markdown(defended),
                                defended))
    runs = progress.run_table(uri, df)
    if not runs.empty:
        sections.append(Section("Runs", progress.to_text(runs), runs))
    return sections


def to_markdown(sections: list[Section]) -> str:
    return "\n\n".join(f"## {s.title}\n\n{s.markdown}" for s in sections) + "\n"


def to_html(sections: list[Section], title: str, figures: list[Path] = (),
            relative_to: Path | None = None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}</style>"
             f"</head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.table.empty:
            parts.append(f"<pre>{html.escape(s.markdown)}</pre>")
        else:
            parts.append(s.table.to_html(index=False, float_format=lambda v: f"{v:.4g}",
                                         na_rep=""))
    for path in figures:
        src = path if relative_to is None else os.path.relpath(Path(path).resolve(),
                                                               relative_to.resolve())
        parts.append(f"<h2>{html.escape(Path(path).stem)}</h2>"
                     f"<img src='{html.escape(str(src))}' style='max-width:100%'>")
    parts.append("</body></html>")
    return "".join(parts)
