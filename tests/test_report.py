"""Intervals and report tables."""

import json
import math

import pandas as pd
import pytest

from raypoison.analysis.report import success_table, to_markdown
from raypoison.analysis.stats import clopper_pearson, wilson
from raypoison.cli import main
from raypoison.store import results
from raypoison.store.sink import ParquetSink
from raypoison.store.storage import Location


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
    from raypoison.store.rows import SCHEMA_VERSION

    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    for row in _rows():
        sink.add([dict(row, schema_version=SCHEMA_VERSION, trial=0)])
    sink.flush()
    assert main(["report", str(tmp_path), "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    assert "| s | a | black-box | 20 | 5.0 [0.9, 23.6] | cluster-robust wilson (trials), n_eff 20 |" \
        in out
    assert "| s | a | white-box | 10 | 40.0 [16.8, 68.7] | wilson |" in out  # one outcome a trial
    table = pd.read_csv(tmp_path / "t.csv")
    assert table["role"].tolist() == ["all", "black-box", "white-box"]
    assert table["n"].tolist() == [30, 20, 10]  # "all" pools every victim


def test_published_numbers_sit_beside_ours_and_flag_when_they_differ():
    def rows(successes, scenario="cifar10-transfer"):
        return [{"trial_id": f"t{i}", "scenario": scenario, "attack": "fc",
                 "attack_name": "feature_collision", "victim": "wb", "role": "white-box",
                 "status": "ok", "success": i < successes} for i in range(100)]

    near = success_table(pd.DataFrame(rows(22))).set_index("role").loc["white-box"]
    assert near["published"] == 22.0 and not bool(near["differs"])
    far = success_table(pd.DataFrame(rows(5))).set_index("role").loc["white-box"]
    assert far["published"] == 22.0 and bool(far["differs"]) and far["published_p"] < 0.001
    assert "22 (differs, p < 0.05)" in to_markdown(success_table(pd.DataFrame(rows(5))), "wilson")
    # 13 of 100: the paper's 22 lies outside our Wilson interval [7.8, 21.0], but the paper's
    # own 100 trials carry sampling error too, and the two-sample test does not call it a
    # difference (p = 0.09)
    close = success_table(pd.DataFrame(rows(13))).set_index("role").loc["white-box"]
    assert close["high"] < 0.22 and not bool(close["differs"])
    assert close["published_p"] == pytest.approx(0.093, abs=0.002)
    other = success_table(pd.DataFrame(rows(5, scenario="mine")))
    assert other["published"].isna().all()


def test_newcombe_and_mcnemar_match_known_values():
    from raypoison.analysis.stats import mcnemar_exact, newcombe_difference

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
    from raypoison.analysis.compare import compare_attacks

    diff = compare_attacks(pd.DataFrame(_paired_rows()), "strong", "weak").iloc[0]
    assert diff["pairs"] == 30 and diff["only_first"] == 9 and diff["only_second"] == 0
    assert diff["difference"] == pytest.approx(0.3)
    assert diff["low"] > 0 and diff["high"] <= 0.6 and diff["p_mcnemar"] < 0.01
    with pytest.raises(ValueError, match="no completed trials of attack 'nope'"):
        compare_attacks(pd.DataFrame(_paired_rows()), "strong", "nope")


def test_report_writes_markdown_html_comparisons_figures_and_run_progress(tmp_path, capsys):
    import json

    from raypoison.store.rows import SCHEMA_VERSION

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
    assert "<table" in page and "success-vs-epsilon.png</figcaption>" in page
    assert "data:image/png;base64," in page and "<img alt='success-vs-epsilon' src='data:" in page
    assert (tmp_path / "fig" / "success-vs-epsilon.png").stat().st_size > 1000
    assert not (tmp_path / "fig" / "success-vs-patch_size.png").exists()  # one value only
    assert main(["report", str(out), "--compare", "strong", "nope"]) == 2
    capsys.readouterr()
    # the results/ folder inside the output, as analysts pass it, still finds the manifests
    assert main(["report", str(out / "results"), "--csv", str(tmp_path / "t.csv")]) == 0
    inner = capsys.readouterr()
    assert "wrote 60 of the 80 trials it had to compute" in inner.out
    assert f"wrote {tmp_path / 't.csv'}" in inner.err  # a file written is said, on stderr


def test_a_report_on_a_missing_path_or_a_file_says_which(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert main(["report", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: report: {tmp_path / 'absent'} does not exist; give a run's output "
                   "folder (the --output of raypoison run)",
                   f"error: report: {tmp_path / 'notes.txt'} is a file; give a run's output "
                   "folder (the --output of raypoison run)"]


def test_a_report_piped_into_head_still_writes_its_files(tmp_path):
    """A reader that closes the pipe early (``| head -1``) made the report die with a
    BrokenPipeError traceback before it wrote --markdown."""
    import subprocess
    import sys

    from raypoison.store.rows import SCHEMA_VERSION

    sink = ParquetSink(Location.parse(str(tmp_path / "out")), "r")
    sink.add([dict(r, schema_version=SCHEMA_VERSION, run_id="r") for r in _paired_rows()])
    sink.flush()
    # the reader is gone before the report prints (as `| head` is once it has its lines)
    proc = subprocess.Popen([sys.executable, "-m", "raypoison.cli", "report",
                             str(tmp_path / "out"), "--markdown", str(tmp_path / "r.md")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and f"wrote {tmp_path / 'r.md'}" in err
    assert (tmp_path / "r.md").read_text().startswith("## Success rates")


def test_backdoor_cells_carry_the_mean_attack_success_rate():
    rows = [dict(r, attack_success_rate=0.1 * (i % 3)) for i, r in enumerate(_rows())
            if r["role"] == "white-box"]
    table = success_table(pd.DataFrame(rows))
    cell = table.set_index("role").loc["white-box"]
    ok = [r["attack_success_rate"] for r in rows if r["status"] == "ok"]
    assert cell["asr"] == pytest.approx(sum(ok) / len(ok))
    assert cell["asr_low"] <= cell["asr"] <= cell["asr_high"]
    assert "attack success rate % (mean, 95% t)" in to_markdown(table, "wilson")
    assert "asr" not in success_table(pd.DataFrame(_rows())).columns  # no backdoor, no column


def _pooled_rows(agree: bool, trials: int = 100):
    """Two black-box victims per trial; 30 trials succeed on the first victim. With ``agree``
    the second victim has the same outcome; otherwise its 30 successes fall on other trials."""
    rng = __import__("numpy").random.default_rng(0)
    first = set(range(30))
    second = first if agree else set(rng.choice(range(30, trials), 30, replace=False).tolist())
    return [{"trial_id": f"t{t}", "scenario": "s", "attack": "a", "victim": v, "role": "black-box",
             "status": "ok", "success": t in (first if v == "bb1" else second)}
            for t in range(trials) for v in ("bb1", "bb2")]


def test_a_pooled_cell_whose_victims_agree_is_as_wide_as_one_victim():
    """Every victim of a trial with the same outcome: 200 outcomes carry the information of 100,
    and the interval is one victim's (the plain Wilson interval over 200 would be about 1/√2 as
    wide); victims that disagree, here anti-correlated, give the narrower interval over 200."""
    from raypoison.analysis.stats import wilson

    agree = success_table(pd.DataFrame(_pooled_rows(True))).iloc[0]
    one_victim = wilson(30, 100)
    assert agree["n"] == 200 and agree["method"] == "cluster-robust wilson (trials)"
    assert agree["n_effective"] == pytest.approx(100)
    assert (agree["low"], agree["high"]) == pytest.approx(one_victim, abs=1e-9)
    naive = wilson(60, 200)
    assert (naive[1] - naive[0]) < 0.75 * (one_victim[1] - one_victim[0])
    independent = success_table(pd.DataFrame(_pooled_rows(False))).iloc[0]
    assert independent["rate"] == pytest.approx(0.3)
    assert independent["n_effective"] == pytest.approx(200)
    assert independent["high"] - independent["low"] == pytest.approx(naive[1] - naive[0])


def test_trials_sharing_a_crafting_model_cluster_on_it():
    """A Witches' Brew pool: trial i crafted on model i mod 2. The unit is the model."""
    rows = [{"trial_id": f"t{t}", "scenario": "s", "attack": "wb", "victim": "v", "role": "white-box",
             "status": "ok", "success": t % 2 == 0, "crafting_model": f"m{t % 2}"} for t in range(40)]
    cell = success_table(pd.DataFrame(rows)).iloc[0]
    assert cell["method"] == "cluster-robust wilson (crafting models)"
    assert cell["n_effective"] == pytest.approx(2)  # the two models' outcomes differ completely
    fresh = [dict(r, crafting_model=f"fresh m (trial {i})") for i, r in enumerate(rows)]
    assert success_table(pd.DataFrame(fresh)).iloc[0]["method"] == "wilson"


def test_paired_comparison_resamples_trials_not_victims():
    """Two victims per trial that always agree: the paired difference counts each trial once."""
    from raypoison.analysis.compare import compare_attacks

    rows = []
    for trial in range(30):
        for attack, success in (("strong", trial < 12), ("weak", trial < 3)):
            for victim in ("v1", "v2"):
                rows.append({"trial_id": f"{attack}{trial}", "scenario": "s", "attack": attack,
                             "victim": victim, "role": "black-box", "trial": trial,
                             "status": "ok", "success": success})
    diff = compare_attacks(pd.DataFrame(rows), "strong", "weak").iloc[0]
    single = compare_attacks(pd.DataFrame([r for r in rows if r["victim"] == "v1"]),
                             "strong", "weak").iloc[0]
    assert diff["pairs"] == 60 and diff["trials"] == 30
    assert (diff["only_first"], diff["only_second"]) == (9, 0)  # trials, not victims
    assert diff["p_mcnemar"] == pytest.approx(single["p_mcnemar"])
    assert (diff["low"], diff["high"]) == pytest.approx((single["low"], single["high"]))


def test_report_compares_two_scenarios_defenses_on_the_same_victims(tmp_path, capsys):
    from raypoison.store.rows import SCHEMA_VERSION
    from tests.test_stats import _defended

    rows = []
    for scenario, lost in (("drawn", 0.02), ("held", 0.03)):
        for attack in ("badnets", "control"):
            for t in range(2):
                common = {"scenario": scenario, "trial_id": f"{scenario}-{attack}-{t}",
                          "seed_train": 7 + t, "role": "white-box", "success": attack != "control"}
                rows.append(_defended(attack, t, "none", **common))
                rows.append(_defended(attack, t, "pt", **common,
                                      clean_accuracy_repaired=0.8 + 0.01 * t - lost,
                                      attack_success_rate_repaired=0.5))
    out = tmp_path / "out"
    sink = ParquetSink(Location.parse(str(out)), "r")
    sink.add([dict(r, schema_version=SCHEMA_VERSION, run_id="r") for r in rows])
    sink.flush()
    assert main(["report", str(out), "--compare-scenarios", "drawn", "held"]) == 0
    printed = capsys.readouterr().out
    assert "## Defenses of drawn minus held, paired on the same victims" in printed
    # the same difference on both seeds: no interval, not a point
    assert "| all attacks | pt | v | clean accuracy lost, points | 4 pairs, 2 seeds | 2.00 | " \
           "3.00 | -1.00 | 0 |" in printed
    # --csv writes the pooled repair cost (the "all models" rows) beside the defense table
    csv = tmp_path / "t.csv"
    assert main(["report", str(out), "--csv", str(csv)]) == 0
    assert f"{tmp_path / 't-repair-cost.csv'}" in capsys.readouterr().err
    cost = pd.read_csv(tmp_path / "t-repair-cost.csv").set_index("scenario")
    assert list(cost["defense"]) == ["pt", "pt"] and (cost["models"] == 4).all()
    assert (cost["seeds"] == 2).all()
    assert cost.loc["held", "clean_accuracy_loss"] == pytest.approx(0.03)
    assert main(["report", str(out), "--compare-scenarios", "drawn", "nope"]) == 2
    assert "--compare-scenarios: no defended rows of scenario 'nope'" in capsys.readouterr().err
    # one scenario's report: the other's rows are left out of every table
    (out / "manifests").mkdir()  # one run wrote both scenarios: 8 trials
    (out / "manifests" / "run-r.json").write_text(json.dumps(
        {"run_id": "r", "suite": "x", "status": "completed", "started_at": "2026-01-01",
         "trials": {"planned": 8, "skipped_already_done": 0}}))
    assert main(["report", str(out), "--scenarios", "held"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 8 of the 8 trials it had to compute (100%)" in printed  # not 4 of 8
    defenses = printed[printed.index("## Defenses"):printed.index("## Rows by status")]
    assert "drawn" not in defenses and "| all models |  | 4 models, 2 seeds |" in defenses
    assert "| 3.0 |" in defenses and "| 2.0 " not in defenses  # held lost 3 on each model
    assert main(["report", str(out), "--scenarios", "held", "--compare-scenarios", "drawn",
                 "held"]) == 2
    assert main(["report", str(out), "--scenarios", "held,nope"]) == 2
    assert "--scenarios: no scenario 'nope' in" in capsys.readouterr().err


def test_a_paired_comparison_shows_labels_that_are_not_identifiers():
    """Sweep labels (badnets-poisons50) once crashed the display of --compare."""
    from raypoison.analysis.compare import compare_attacks
    from raypoison.analysis.tables import compare_display

    renamed = {"strong": "badnets-poisons50", "weak": "blend-alpha0.1"}
    rows = [dict(r, attack=renamed[r["attack"]]) for r in _paired_rows()]
    diff = compare_attacks(pd.DataFrame(rows), "badnets-poisons50", "blend-alpha0.1")
    shown = compare_display(diff, "badnets-poisons50", "blend-alpha0.1").iloc[0]
    assert (shown["badnets-poisons50 %"], shown["blend-alpha0.1 %"]) == ("40.0", "10.0")
    assert shown["only badnets-poisons50"] == "9"


def _victims_agree(trials: int, asr: list[float] | None = None, attack: str = "a",
                   successes: int = 0) -> list[dict]:
    """Three victims per trial with the same outcome (and attack success rate) on each."""
    return [{"trial_id": f"{attack}{t}", "scenario": "s", "attack": attack, "victim": v,
             "role": "white-box", "trial": t, "status": "ok", "success": t < successes,
             **({"attack_success_rate": asr[t]} if asr else {})}
            for t in range(trials) for v in ("v1", "v2", "v3")]


def test_a_backdoor_cells_attack_success_interval_is_over_trials_not_victims():
    """3 trials × 3 victims that agree: 3 values, the t interval on 2 degrees of freedom (over
    the 9 rows it claimed 8, [23.4, 76.6] here)."""
    from raypoison.analysis.stats import mean_interval

    cell = success_table(pd.DataFrame(_victims_agree(3, [0.1, 0.5, 0.9]))).iloc[0]
    assert (cell["asr"], cell["asr_low"], cell["asr_high"]) == pytest.approx(
        mean_interval([0.1, 0.5, 0.9], bounds=(0.0, 1.0)))
    assert cell["asr_low"] == 0.0 and cell["asr_high"] == 1.0


def test_against_another_dataset_counts_a_trials_agreeing_victims_once():
    """20 trials × 3 victims that agree, 10 against 4 successful trials: Newcombe's interval of
    10/20 against 4/20, not of 30/60 against 12/60 (which claimed three times the data)."""
    from raypoison.analysis.compare import compare_datasets
    from raypoison.analysis.stats import newcombe_difference

    diff = compare_datasets(pd.DataFrame(_victims_agree(20, successes=10)),
                            pd.DataFrame(_victims_agree(20, successes=4))).iloc[0]
    assert diff["n"] == 60 and diff["difference"] == pytest.approx(0.3)
    assert (diff["low"], diff["high"]) == pytest.approx(newcombe_difference(10, 20, 4, 20)[1:])


def test_two_trials_that_agree_do_not_make_a_paired_difference_certain():
    """Both trials: the first attack succeeds, the second fails. The percentile bootstrap said
    [1, 1]; two equal draws allow the difference down to 2 × 0.025^(1/2) − 1."""
    from raypoison.analysis.compare import compare_attacks

    rows = _victims_agree(2, attack="strong", successes=2) + _victims_agree(2, attack="weak")
    for r in rows:
        r["trial_id"] = f"{r['attack']}{r['trial']}"
    diff = compare_attacks(pd.DataFrame(rows), "strong", "weak").iloc[0]
    assert diff["difference"] == 1.0 and diff["p_mcnemar"] == pytest.approx(0.5)
    assert (diff["low"], diff["high"]) == pytest.approx((2 * 0.025 ** 0.5 - 1, 1.0))


def test_the_report_leaves_out_rows_of_an_older_protocol_version(tmp_path, capsys):
    """A protocol bump changes trial ids, so a rerun writes its rows beside the old ones: the
    tables use each scenario's newest version and say what they left out; --csv and
    --figures still get the success table."""
    from raypoison.analysis.report import current_protocol
    from raypoison.store.rows import SCHEMA_VERSION

    def rows(scenario, version, successes, prefix):
        return [dict(r, scenario=scenario, trial_id=f"{prefix}{r['trial']}",
                     protocol_version=version) for r in _victims_agree(4, successes=successes)]

    old, new = rows("s", "2", 0, "s-v2-"), rows("s", "3", 2, "s-v3-")
    other = rows("t", "2", 1, "t-v2-")  # another scenario's only version stays
    unversioned = [dict(r, protocol_version=None) for r in rows("s", "", 4, "s-none-")]
    edited = rows("s", "v3-beta", 4, "s-beta-")  # no release writes it: it hides nothing
    kept, left_out = current_protocol(pd.DataFrame(old + new + other + unversioned + edited))
    assert len(kept) == len(new) + len(other)
    assert left_out.to_dict("records") == [
        {"scenario": "s", "protocol_version": "", "rows": 12, "newest": "3"},
        {"scenario": "s", "protocol_version": "2", "rows": 12, "newest": "3"},
        {"scenario": "s", "protocol_version": "v3-beta", "rows": 12, "newest": "3"}]
    out = tmp_path / "out"
    sink = ParquetSink(Location.parse(str(out)), "r")
    sink.add([dict(r, schema_version=SCHEMA_VERSION, run_id="r") for r in old + new + other])
    sink.flush()
    csv = tmp_path / "r.csv"
    assert main(["report", str(out), "--layout", "long", "--csv", str(csv),
                 "--figures", str(tmp_path / "fig")]) == 0
    printed = capsys.readouterr().out
    assert "## Rows of older protocol versions left out" in printed
    assert "| s | 2 | 12 | 3 |" in printed
    assert "| s | a | white-box | 12 | 50.0 [" in printed  # 2 of 4 trials, version 3 only
    assert "| t | a | white-box | 12 | 25.0 [" in printed
    table = pd.read_csv(csv)
    assert {"rate", "low", "high"} <= set(table.columns) and len(table) == 2


def test_figures_take_each_point_whole_and_cluster_a_trials_victims():
    from raypoison.analysis.figures import sweep_points, undefended_points

    table = pd.DataFrame([  # two defenses' rows of one poison count: a NaN-bounded one first
        {"poisons": 50, "n": 1, "attack_success_rate": 0.2,
         "attack_success_rate_low": math.nan, "attack_success_rate_high": math.nan},
        {"poisons": 50, "n": 2, "attack_success_rate": 0.6,
         "attack_success_rate_low": 0.5, "attack_success_rate_high": 0.7}])
    point = undefended_points(table).iloc[0]
    assert (point["attack_success_rate"], point["attack_success_rate_low"]) == (0.6, 0.5)
    rows = pd.DataFrame([dict(r, epsilon=8) for r in _victims_agree(20, successes=10)])
    line = sweep_points(rows, "epsilon").iloc[0]
    assert line["rate"] == 0.5
    assert (line["low"], line["high"]) == pytest.approx(wilson(10, 20))  # 20 trials, not 60


def test_a_paired_comparisons_rates_and_difference_weigh_trials_alike():
    """Trial 0 has two victims (both succeed), trial 1 one (fails); the other attack fails
    everywhere. The rates must agree with the difference: 0.5, not 2 of 3 victim rows."""
    from raypoison.analysis.compare import compare_attacks

    rows = [{"trial_id": f"{a}{t}", "scenario": "s", "attack": a, "victim": v, "role": "all",
             "trial": t, "status": "ok", "success": a == "strong" and t == 0}
            for a in ("strong", "weak") for t, v in ((0, "v1"), (0, "v2"), (1, "v1"))]
    diff = compare_attacks(pd.DataFrame(rows), "strong", "weak").iloc[0]
    assert diff["rate_strong"] - diff["rate_weak"] == pytest.approx(diff["difference"]) == 0.5


def test_rows_no_run_writes_are_left_out_of_the_report_and_counted(tmp_path, capsys):
    """Hand-edited or foreign rows: a share outside [0, 1] gave a mean outside its own interval
    (109.0 [-100.0, 100.0]); a null victim collapsed two rows into one key; a null role counted
    in 'all' and in no role. They are left out, and the warning says how many and why."""
    from raypoison.analysis.row_checks import split_malformed
    from raypoison.store.rows import SCHEMA_VERSION

    def good(index: int, **changes):
        return {"schema_version": SCHEMA_VERSION, "protocol_version": "3",
                "trial_id": f"t{index}", "scenario": "s", "attack": "a", "attack_name": "a",
                "victim": "v", "role": "white-box", "trial": index, "status": "ok",
                "success": index % 2 == 0, "clean_accuracy": 0.8, **changes}

    rows = [good(i) for i in range(4)] + [
        good(4, clean_accuracy=1.7), good(5, victim=None), good(6, role=None),
        good(7, trial=-3), good(8, status="maybe"), good(9, flag_auc=2.0),
        good(10, protocol_version="v3-beta")]
    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    sink.add(rows)
    sink.flush()
    df = results.load(str(tmp_path))
    kept, bad = split_malformed(df)
    assert sorted(kept["trial"]) == [0, 1, 2, 3]
    assert dict(zip(bad["reason"], bad["rows"], strict=True)) == {
        "clean_accuracy outside [0, 1]": 1, "victim missing": 1, "role missing or unknown": 1,
        "negative trial index": 1, "unknown status": 1, "flag_auc outside [0, 1]": 1,
        "protocol_version not a whole number": 1}
    assert main(["report", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "left out 1 rows of" in captured.err and "(victim missing)" in captured.err
    assert "| s | a | white-box | 4 | 50.0 [15.0, 85.0] | wilson |" in captured.out


def test_against_says_when_the_datasets_share_no_scenario_or_differ_in_protocol(tmp_path, capsys):
    from raypoison.store.rows import SCHEMA_VERSION

    def write(folder, version, scenario="s"):
        sink = ParquetSink(Location.parse(str(folder)), "r")
        sink.add([dict(r, schema_version=SCHEMA_VERSION, run_id="r", protocol_version=version,
                       scenario=scenario) for r in _paired_rows()])
        sink.flush()

    write(tmp_path / "a", "3")
    write(tmp_path / "b", "2")
    write(tmp_path / "c", "3", scenario="elsewhere")
    assert main(["report", str(tmp_path / "a"), "--against", str(tmp_path / "b")]) == 0
    assert "scenario s is protocol version 3 here and 2 in" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "a"), "--against", str(tmp_path / "c")]) == 2
    assert "no scenario in common" in capsys.readouterr().err
