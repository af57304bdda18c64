"""A report as a list of sections, rendered to markdown or to one self-contained HTML page.

:func:`assemble` gathers what ``raypoison report`` shows, in this order: the success table (in the
layout of Table 3 or one row per cell, :mod:`raypoison.analysis.tables`), comparisons asked for,
the defenses in the paper's layout, the rows by status, and at the end the runs and the methods
(interval method, resampling, seeds). Every section carries the analysis table (numbers, for CSV)
and a display frame (formatted strings, for markdown and HTML); the HTML page embeds its
figures, so it is one file to mail or attach.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from raypoison.analysis import compare, defense_report, report, run_status
from raypoison.analysis import tables as report_tables


@dataclass
class Section:
    title: str
    table: pd.DataFrame = field(default_factory=pd.DataFrame)  # numbers (what --csv writes)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, strings)
    text: str = ""  # paragraphs (markdown-lite: plain text)
    # more numbers for --csv, each written beside the main file as <stem>-<key>.csv
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)


def _methods(interval: str) -> str:
    return (
        f"Success rates carry 95% {interval} intervals. Where a cell holds several outcomes of "
        "one trial (black-box victims, from-scratch victims), the interval is cluster-robust "
        "with the trial as the unit (the Wilson interval at the effective sample size of the "
        "cluster-robust variance; a shared Witches' Brew pool clusters on its crafting models); "
        "n_eff is that effective size. The paper's number is compared with a two-sample test "
        f"that counts the paper's own sampling error (100 outcomes a cell, 200 for black-box, "
        f"300 for from-scratch 'all'); {report_tables.DIFFERS_MARK} marks p < 0.05. Paired "
        "comparisons of two attacks take a Student t interval over trials and the exact sign "
        "test over trials; comparisons with another dataset take Newcombe's interval at each "
        "side's effective size. Means over models (the defenses) and over trials (a backdoor's "
        "attack success rate) carry Student t intervals, none for a single value; where every "
        "value is the same at an end of its range, the interval that n equal draws allow (0 of "
        "2 models: 0 to 84%), elsewhere none, never a point. Detection AUCs carry Newcombe's "
        "score interval (his method 5), with Birnbaum and Klose's variance where a side has 5 "
        "models or fewer. No interval is random, so a report of the same rows is the same report.")


def assemble(df: pd.DataFrame, uri: str, *, interval: str = "wilson", per_victim: bool = False,
             compare_attacks: tuple[str, str] | None = None,
             against: tuple[str, pd.DataFrame] | None = None,
             compare_scenarios: tuple[str, str] | None = None,
             layout: str = "auto", left_out: pd.DataFrame | None = None,
             every_row: pd.DataFrame | None = None) -> list[Section]:
    """The report's sections, the success table first; ``left_out``
    (:func:`raypoison.analysis.report.current_protocol`) says which rows of older protocol
    versions the tables leave out (the section after it). ``every_row``: the output's rows
    before a ``--scenarios`` filter, which the runs' progress counts (a run's manifest counts
    every scenario it planned); by default ``df``."""
    sections = []
    table = report.success_table(df, interval=interval, per_victim=per_victim)
    if not per_victim and report_tables.uses_table3(table, layout):
        names = dict(zip(df["attack"], df.get("attack_name", df["attack"]), strict=True))
        shown = report_tables.success_table3(table, names)
        title = "Success rates, % [95% interval] (the layout of Table 3)"
    else:
        shown = report_tables.success_long(table, interval)
        title = "Success rates, % [95% interval]"
    sections.append(Section(title, table, [("", shown)]))
    if left_out is not None and not left_out.empty:
        sections.append(Section(
            "Rows of older protocol versions left out", left_out,
            [("", left_out.astype(str))],
            "Each scenario's tables use only its newest protocol version: older rows are other "
            "trials (a bump changes trial ids) and would count twice or mix two protocols. "
            "Filter the Parquet on protocol_version to read them."))
    if compare_attacks is not None:
        sections.append(_paired(
            df, compare_attacks, compare.compare_attacks, report_tables.compare_display,
            "{first} minus {second}, paired by trial",
            "Percentage points; 95% paired Student t interval over trials; exact sign test over the "
            "trials where the two differ (McNemar's with one victim a trial)."))
    if against is not None:
        other_uri, other = against
        diff = compare.compare_datasets(df, other)
        sections.append(Section(f"This dataset minus {other_uri}", diff,
                                [("", report_tables.against_display(diff))],
                                "Independent samples; 95% Newcombe intervals at each side's "
                                "effective size (a trial's victims count as one where they "
                                "agree), percentage points."))
    defended = defense_report.defense_table(df)
    if not defended.empty:
        sizes = sorted({int(t) for t in defended["trusted"].dropna()})
        trusted = (f"Trusted set: {' / '.join(map(str, sizes))} clean images"
                   f"{' (per scenario)' if len(sizes) > 1 else ''}. " if sizes else "")
        pooled = defense_report.pooled_repair_cost(df)
        sections.append(Section("Defenses", defended,
                                report_tables.defense_pivots(defended, pooled),
                                f"{trusted}Means over models with 95% Student t intervals "
                                "(n: models per row; one model has no interval); detection AUC "
                                "against the no-attack control's models of the same victim "
                                "(n: attacked vs control models), with Newcombe's interval "
                                "(at most 5 models a side: with Birnbaum and Klose's variance "
                                "bound). A cell marked (n k) rests on k models, fewer than its "
                                "row's n (the defense ran on fewer, or its value is undefined "
                                "on some: precision where nothing was flagged); an AUC cell "
                                "marked (k vs j) on fewer attacked or control models. The "
                                "undefended columns are those of the defense that ran on the "
                                "most of a row's models (each defense's own, paired with it, "
                                "are in the CSV); models with no defense row count in the "
                                "success table only. "
                                "The clean-accuracy loss closes with each repair over "
                                f"{defense_report.POOLED} of the scenario, every attack and the "
                                "control: models of one trial index share a training seed, so "
                                "they are averaged per seed and the interval is over seeds "
                                "(a repair run on fewer says its own models and seeds).",
                                extra={"repair-cost": pooled}))
    if compare_scenarios is not None:
        sections.append(_paired(
            df, compare_scenarios, compare.compare_scenarios, report_tables.scenarios_display,
            "Defenses of {first} minus {second}, paired on the same victims",
            "Each pair is one defense on one victim in both scenarios, counted only where both "
            "defended the same model (equal training seed, clean accuracy and attack success "
            "before it; unpaired: rows whose twin was another model). Means over pairs with a "
            f"95% Student t interval; {compare.ALL_ATTACKS}: each seed's pairs averaged first, "
            "the interval over seeds."))
    status = report.status_table(df)
    sections.append(Section("Rows by status", status,
                            [("", report_tables.status_display(status))]))
    recorded = run_status.manifests(uri)
    runs = run_status.run_table(recorded, df if every_row is None else every_row)
    if not runs.empty:
        sections.append(Section("Runs", runs, text=run_status.to_text(runs)))
    conflicts = run_status.weight_conflicts(recorded)
    if conflicts:
        sections.append(Section("Warning: pre-trained weights differ between runs", text="\n".join(
            run_status.conflict_text(f, d) for f, d in conflicts.items())))
    sections.append(Section("Methods", text=_methods(interval)))
    return sections


def _paired(df: pd.DataFrame, pair: tuple[str, str],
            differ: Callable[[pd.DataFrame, str, str], pd.DataFrame],
            display: Callable[[pd.DataFrame, str, str], pd.DataFrame],
            title: str, note: str) -> Section:
    """A section of paired differences between two things of the dataset (attacks,
    scenarios): ``differ``'s table, shown by ``display``."""
    first, second = pair
    diff = differ(df, first, second)
    return Section(title.format(first=first, second=second), diff,
                   [("", display(diff, first, second))], note)


def to_markdown(sections: list[Section]) -> str:
    parts = []
    for s in sections:
        body = [f"## {s.title}"]
        if s.text:
            body.append(s.text)
        for caption, frame in s.tables:
            if caption:
                body.append(f"**{caption}**")
            body.append(report_tables.markdown_table(frame))
        parts.append("\n\n".join(body))
    return "\n\n".join(parts) + "\n"


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:1em 0 .2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}tbody tr:nth-child(even){background:#fafafa}
.scroll{overflow-x:auto}figure{margin:1em 0}figure img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}p.note{font-size:.9em;color:#444}
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def to_html(sections: list[Section], title: str, figures: Sequence[Path] = ()) -> str:
    """One self-contained page: styles inline, figures embedded as data URIs."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
             f"<h1>{html.escape(title)}</h1>"]
    closing = [s for s in sections if s.title in ("Runs", "Methods")]
    for s in [s for s in sections if s not in closing]:
        parts.append(_html_section(s))
    if figures:
        parts.append("<h2>Figures</h2>")
        for path in figures:
            name = Path(path).stem
            parts.append(f"<figure><img alt='{html.escape(name)}' src='{_data_uri(path)}'>"
                         f"<figcaption>{html.escape(name)}.png</figcaption></figure>")
    for s in closing:
        parts.append(_html_section(s))
    parts.append("</body></html>")
    return "".join(parts)


def _html_section(s: Section) -> str:
    out = [f"<h2>{html.escape(s.title)}</h2>"]
    if s.text:
        out.extend(f"<p class='note'>{html.escape(line)}</p>" for line in s.text.splitlines())
    for caption, frame in s.tables:
        if caption:
            out.append(f"<h3>{html.escape(caption)}</h3>")
        out.append(f"<div class='scroll'>{report_tables.html_table(frame)}</div>")
    return "".join(out)
