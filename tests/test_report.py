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


def test_newcombe_and_mcnemar_match_known_values():
    from raypoison.stats import mcnemar_exact, newcombe_difference

    # Newcombe (1998), table II example: 56/70 vs 48/80 -> 0.2000 [0.0524, 0.3339]
    d, low, high = newcombe_difference(56, 70, 48, 80)
    assert (d, low, high) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)  # 2 x 0.5^6
    assert mcnemar_exact(3, 3) == 1.0


def _paired_rows():
    rows = []
    for trial in range(30):
        for attack, success in (("strong", trial < 12), ("weak", trial < 3)):
            rows.append({"trial_id": f"{attack}{trial}", "scenario": "s", "attack": attack,
                         "attack_name": attack, "victim": "wb", "role": "white-box",
                         "trial": trial, "status": "ok", "success": success, "defense": "none",
                         "epsilon": 8 / 255 if trial % 2 else 16 / 255, "patch_size": 5,
                         "poisons": 25, "suite": "x"})
    return rows


def test_paired_comparison_of_two_attacks():
    from raypoison.compare import compare_attacks

    diff = compare_attacks(pd.DataFrame(_paired_rows()), "strong", "weak").iloc[0]
    assert diff["pairs"] == 30 and diff["only_first"] == 9 and diff["only_second"] == 0
    assert diff["difference"] == pytest.approx(0.3)
    assert diff["low"] > 0 and diff["high"] <= 0.6 and diff["p_mcnemar"] < 0.01
    with pytest.raises(ValueError, match="no completed trials of attack 'nope'"):
        compare_attacks(pd.DataFrame(_paired_rows()), "strong", "nope")


def test_report_writes_markdown_html_comparisons_figures_and_run_progress(tmp_path, capsys):
    import json

    from raypoison.rows import SCHEMA_VERSION

    out, other = tmp_path / "out", tmp_path / "other"
    for folder, rows in ((out, _paired_rows()), (other, _paired_rows()[:20])):
        sink = ParquetSink(Location.parse(str(folder)), "r")
        sink.add([dict(r, schema_version=SCHEMA_VERSION, run_id="r") for r in rows])
        sink.flush()
    (out / "manifests").mkdir()
    (out / "manifests" / "run-a.json").write_text(json.dumps(
        {"run_id": "r", "suite": "x", "status": "running", "host": "elsewhere", "pid": 1,
         "started_at": "2026-01-01T00:00:00",
         "trials": {"planned": 90, "skipped_already_done": 10}}))
    assert main(["report", str(out), "--compare", "strong", "weak", "--against", str(other),
                 "--markdown", str(tmp_path / "r.md"), "--html", str(tmp_path / "r.html"),
                 "--figures", str(tmp_path / "fig")]) == 0
    printed = capsys.readouterr().out
    assert "strong minus weak" in printed and "95% Newcombe" in printed
    assert "wrote 60 of the 80 trials it had to compute (75%) (90 planned, 10 already done)" \
        in printed
    assert (tmp_path / "r.md").read_text().strip() in printed
    page = (tmp_path / "r.html").read_text()
    assert "<table" in page and "fig/success-vs-epsilon.png" in page
    assert (tmp_path / "fig" / "success-vs-epsilon.png").stat().st_size > 1000
    assert not (tmp_path / "fig" / "success-vs-patch_size.png").exists()  # one value only
    assert main(["report", str(out), "--compare", "strong", "nope"]) == 2


def test_backdoor_cells_carry_the_mean_attack_success_rate():
    rows = [dict(r, attack_success_rate=0.1 * (i % 3)) for i, r in enumerate(_rows())
            if r["role"] == "white-box"]
    table = success_table(pd.DataFrame(rows))
    cell = table.set_index("role").loc["white-box"]
    ok = [r["attack_success_rate"] for r in rows if r["status"] == "ok"]
    assert cell["asr"] == pytest.approx(sum(ok) / len(ok))
    assert cell["asr_low"] <= cell["asr"] <= cell["asr_high"]
    assert "attack success rate % (mean, 95% bootstrap)" in to_markdown(table, "wilson")
    assert "asr" not in success_table(pd.DataFrame(_rows())).columns  # no backdoor, no column
