"""The report as a reader sees it: cells as the paper prints them, Table 3's layout, figures."""

import struct

import pandas as pd

from raypoison.analysis.document import assemble, to_html, to_markdown
from raypoison.analysis.report import success_table
from raypoison.analysis.tables import interval_cell, markdown_table, success_long, success_table3
from raypoison.cli import main
from raypoison.store.rows import SCHEMA_VERSION
from raypoison.store.sink import ParquetSink
from raypoison.store.storage import Location


def test_a_cell_reads_rate_and_interval_in_percent_and_missing_is_empty():
    assert interval_cell(0.22, 0.1493, 0.3118) == "22.0 [14.9, 31.2]"
    assert interval_cell(-0.08, -0.16, -0.02, signed=True) == "-8.0 [-16.0, -2.0]"
    assert interval_cell(0.03, -0.02, 0.07, signed=True) == "+3.0 [-2.0, 7.0]"
    assert interval_cell(None, 0.1, 0.2) == "" and interval_cell(float("nan"), 0, 1) == ""
    assert interval_cell(0.5, float("nan"), float("nan")) == "50.0"


def _benchmark_rows() -> list[dict]:
    """cifar10-transfer with FC (paper: 22 / 7), CP (33 / 7) and the control, 50 trials, one
    white-box and two black-box victims; and a scenario the paper does not have."""
    rows = []
    wins = {"feature_collision": 11, "convex_polytope": 2, "none": 1}
    for scenario in ("cifar10-transfer", "my-own"):
        for attack, k in wins.items():
            for trial in range(50):
                for victim, role in (("wb", "white-box"), ("bb1", "black-box"),
                                     ("bb2", "black-box")):
                    rows.append({"trial_id": f"{scenario}{attack}{trial}", "trial": trial,
                                 "scenario": scenario, "attack": attack, "attack_name": attack,
                                 "victim": victim, "role": role, "status": "ok",
                                 "success": trial < k if role == "white-box" else trial < k // 2,
                                 "run_id": "r", "schema_version": SCHEMA_VERSION})
    return rows


def test_the_table3_layout_has_a_row_per_attack_and_a_column_per_scenario_and_role():
    df = pd.DataFrame(_benchmark_rows())
    table = success_table(df)
    shown = success_table3(table, dict(zip(df["attack"], df["attack_name"], strict=True)))
    assert shown[("attack", "")].tolist() == ["feature_collision", "convex_polytope", "none"]
    assert list(shown.columns) == [
        ("attack", ""),
        ("cifar10-transfer white-box", "ours % [95%] (n)"), ("cifar10-transfer white-box", "paper %"),
        ("cifar10-transfer black-box", "ours % [95%] (n)"), ("cifar10-transfer black-box", "paper %"),
        ("my-own white-box", "ours % [95%] (n)"), ("my-own black-box", "ours % [95%] (n)")]
    fc = shown.iloc[0]
    assert fc[("cifar10-transfer white-box", "ours % [95%] (n)")] == "22.0 [12.8, 35.2] (n 50)"
    assert fc[("cifar10-transfer white-box", "paper %")] == "22.0"
    # two black-box victims that agree on every trial: 100 outcomes, 50 effective
    assert fc[("cifar10-transfer black-box", "ours % [95%] (n)")].endswith("(n 100, 50 effective)")
    cp = shown.iloc[1]
    assert cp[("cifar10-transfer white-box", "paper %")] == "33.0 ≠"  # 4% against 33%
    assert shown.iloc[2][("cifar10-transfer white-box", "paper %")] == ""  # no paper control
    text = markdown_table(shown)
    assert text.splitlines()[0].startswith("| attack | cifar10-transfer white-box ours % [95%] (n) |")


def test_no_cell_of_a_report_says_none_or_nan_and_the_compare_table_is_markdown(tmp_path):
    df = pd.DataFrame(_benchmark_rows())
    sections = assemble(df, str(tmp_path), compare_attacks=("feature_collision", "none"),
                        layout="long")
    text = to_markdown(sections)
    page = to_html(sections, "t")
    for rendered in (text, page):
        assert "None" not in rendered and "nan" not in rendered.replace("nanc", "")
    assert "```" not in text  # every table a markdown table
    assert "| scenario | role | pairs | trials | feature_collision % | none % |" in text
    long = success_long(success_table(df), "wilson")
    mine = long[long["scenario"] == "my-own"]
    assert (mine["paper %"] == "").all() and (mine["p vs paper"] == "").all()
    status = next(s for s in sections if s.title == "Rows by status").tables[0][1]
    assert list(status.columns) == ["scenario", "attack", "ok"]  # no stray "status" header
    assert text.index("## Methods") > text.index("## Rows by status")


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_every_figure_is_a_real_png_and_the_page_embeds_them(tmp_path, capsys):
    out = tmp_path / "out"
    sink = ParquetSink(Location.parse(str(out)), "r")
    for row in _benchmark_rows():
        sink.add([row])
    sink.flush()
    page = tmp_path / "r.html"
    assert main(["report", str(out), "--compare", "feature_collision", "none",
                 "--figures", str(tmp_path / "fig"), "--html", str(page)]) == 0
    printed = capsys.readouterr().out
    figures = sorted((tmp_path / "fig").glob("*.png"))
    assert [f.name for f in figures] == ["compare-feature_collision-vs-none.png",
                                         "forest-cifar10-transfer.png", "forest-my-own.png"]
    for f in figures:
        width, height = _png_size(f)
        assert width >= 500 and height >= 150 and f.stat().st_size > 10_000
        assert f"figure: {f}" in printed
    html = page.read_text()
    assert html.count("src='data:image/png;base64,") == 3 and "src='fig" not in html
    assert "(the layout of Table 3)" in printed  # auto: a benchmark scenario name
