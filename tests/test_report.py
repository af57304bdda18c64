"""Intervals and report tables."""

import math

import pandas as pd
import pytest

from raypoison.cli import main
from raypoison.execution.sink import ParquetSink
from raypoison.report import success_table, to_markdown
from raypoison.stats import clopper_pearson, wilson
from raypoison.storage import Location


@pytest.mark.parametrize("k, n, low, high", [
    (22, 100, 0.1500, 0.3107), (0, 100, 0.0, 0.0370), (50, 50, 0.9287, 1.0)])
def test_wilson_matches_known_values(k, n, low, high):
    assert wilson(k, n) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize("k, n, low, high", [
    (22, 100, 0.1433, 0.3139), (0, 100, 0.0, 0.0362), (1, 10, 0.0025, 0.4450)])
def test_clopper_pearson_matches_known_values(k, n, low, high):
    assert clopper_pearson(k, n) == pytest.approx((low, high), abs=1e-4)


def test_empty_cell_has_no_interval():
    assert all(math.isnan(v) for v in wilson(0, 0) + clopper_pearson(0, 0))


def _rows():
    rows = []
    for trial in range(10):
        for victim, role in (("wb", "white-box"), ("bb1", "black-box"), ("bb2", "black-box")):
            rows.append({"trial_id": f"t{trial}", "scenario": "s", "attack": "a", "victim": victim,
                         "role": role, "status": "ok",
                         "success": (trial < 4) if victim == "wb" else (trial == 0 and victim == "bb1")})
    rows.append({"trial_id": "t99", "scenario": "s", "attack": "a", "victim": "wb",
                 "role": "white-box", "status": "failed", "success": None})
    return rows


def test_black_box_cells_pool_their_victims_and_failures_do_not_count():
    table = success_table(pd.DataFrame(_rows())).set_index("role")
    assert table.loc["white-box", "n"] == 10 and table.loc["white-box", "successes"] == 4
    assert table.loc["black-box", "n"] == 20 and table.loc["black-box", "successes"] == 1
    assert table.loc["black-box", "low"] == pytest.approx(wilson(1, 20)[0])
    per_victim = success_table(pd.DataFrame(_rows()), per_victim=True)
    assert len(per_victim) == 3
    markdown = to_markdown(success_table(pd.DataFrame(_rows()), interval="clopper-pearson"),
                           "clopper-pearson")
    assert "| s | a | white-box | 10 | 40.0 [12.2, 73.8] |" in markdown


def test_report_command_prints_cells_with_n_and_intervals(tmp_path, capsys):
    from raypoison.rows import SCHEMA_VERSION

    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    for row in _rows():
        sink.add([dict(row, schema_version=SCHEMA_VERSION, trial=0)])
    sink.flush()
    assert main(["report", str(tmp_path), "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    assert "success % (95% wilson)" in out and "| s | a | black-box | 20 | 5.0 [0.9, 23.6] |" in out
    table = pd.read_csv(tmp_path / "t.csv")
    assert table["role"].tolist() == ["all", "black-box", "white-box"]
    assert table["n"].tolist() == [30, 20, 10]  # "all" pools every victim


def test_published_numbers_sit_beside_ours_and_flag_when_outside():
    def rows(successes, scenario="cifar10-transfer"):
        return [{"trial_id": f"t{i}", "scenario": scenario, "attack": "fc",
                 "attack_name": "feature_collision", "victim": "wb", "role": "white-box",
                 "status": "ok", "success": i < successes} for i in range(100)]

    near = success_table(pd.DataFrame(rows(22))).set_index("role").loc["white-box"]
    assert near["published"] == 22.0 and not bool(near["outside"])
    far = success_table(pd.DataFrame(rows(5))).set_index("role").loc["white-box"]
    assert far["published"] == 22.0 and bool(far["outside"])
    assert "22 (outside)" in to_markdown(success_table(pd.DataFrame(rows(5))), "wilson")
    other = success_table(pd.DataFrame(rows(5, scenario="mine")))
    assert other["published"].isna().all()
