"""The time a run has left, from the seconds its own rows recorded (``raypoison run --dry-run``)."""

import pandas as pd

from raypoison.analysis.time_left import PendingTrial, duration, time_left


def _rows() -> pd.DataFrame:
    """Two finished BadNets-50 trials of scenario ``s``, two victims each, with Pivotal Tuning;
    and a failed trial whose seconds must not count."""
    rows = []

    def trial(trial_id, status, train, defense, attack="bn-50"):
        for victim, (t, d) in enumerate(zip(train, defense, strict=True)):
            common = dict(trial_id=trial_id, scenario="s", attack=attack, attack_name="badnets",
                          victim=f"v{victim}", status=status, seconds_setup=1.0,
                          seconds_craft=2.0, seconds_check=0.5, seconds_train=t, seconds_eval=1.0)
            rows.append({**common, "defense": "none", "seconds_defense": None})
            rows.append({**common, "defense": "pt", "seconds_defense": d})

    trial("t1", "ok", (10.0, 20.0), (100.0, 50.0))  # training 3.5 + 32 = 35.5, pt 150
    trial("t2", "ok", (30.0, 10.0), (200.0, 100.0))  # training 3.5 + 42 = 45.5, pt 300
    trial("t3", "failed", (9e5, 9e5), (9e5, 9e5))
    return pd.DataFrame(rows)


def test_each_pending_phase_costs_the_median_of_its_finished_trials():
    pending = [
        PendingTrial("s", "bn-50", "badnets", trains=True, defenses=("pt",)),
        # another poison count of the sweep: trained like BadNets-50; strip never ran here
        PendingTrial("s", "bn-500", "badnets", trains=True, defenses=("pt", "strip")),
        PendingTrial("s", "bn-50", "badnets", trains=False, defenses=("pt",)),  # saved victims
        PendingTrial("other", "bn-50", "badnets", trains=True, defenses=()),
    ]
    left = time_left(_rows(), pending)
    medians = 40.5 + 225.0  # training (35.5, 45.5) and pt (150, 300)
    assert left.seconds == medians + medians + 225.0
    assert (left.trials, left.estimated) == (4, 2)
    assert dict(left.unmeasured) == {"strip in s": 1, "training of bn-50 in other": 1}
    assert left.wall(2) == left.seconds / 2  # shared between two workers
    assert left.wall(8) == medians  # 4 trials on 8 workers: as long as the longest one
    assert time_left(_rows(), pending[:1]).wall(2) == medians  # one trial: one worker's time
    text = left.text(workers=2).splitlines()
    assert text[0].startswith("time left: about 13 min of trial computation, about 6 min with "
                              "2 workers (the median of each phase")
    assert text[0].endswith("which 2 of the 4 trials need")
    assert text[1:] == ["  no measured strip in s: 1 trial",
                        "  no measured training of bn-50 in other: 1 trial"]


def test_without_rows_or_pending_trials_it_says_so():
    empty = time_left(pd.DataFrame(), [PendingTrial("s", "a", "a", True, ("pt",))])
    assert empty.seconds == 0 and empty.estimated == 0
    assert empty.text(1).startswith("time left: no finished trial in this output to measure")
    only_failed = _rows().query("trial_id == 't3'")
    assert time_left(only_failed, [PendingTrial("s", "bn-50", "badnets", True, ())]).text(
        1).startswith("time left: no finished trial")
    unmeasured = time_left(_rows(), [PendingTrial("s", "bn-50", "badnets", False, ("strip",))])
    assert unmeasured.text(1).splitlines() == [
        "time left: not estimated, no finished trial in this output measures the phases below",
        "  no measured strip in s: 1 trial"]
    assert time_left(_rows(), []).text(4) == "time left: nothing"


def test_durations_read_in_the_unit_a_reader_wants():
    assert [duration(s) for s in (45, 119.4, 720, 7199, 7200, 12_240)] == [
        "45 s", "119 s", "12 min", "120 min", "2.0 h", "3.4 h"]


def test_progress_shows_the_expected_eta_until_a_trial_ends():
    import io
    import time

    from raypoison.execution.progress import Progress

    progress = Progress(4, stream=io.StringIO(), expected=3600.0)
    progress.start = time.monotonic() - 600  # ten minutes in, no trial done yet
    assert progress.summary().split("ETA ")[1] in ("~49m59s (from earlier rows)",
                                                   "~50m00s (from earlier rows)")
    progress.update(done=1, failed=0, in_flight=3)  # then the measured rate takes over
    assert progress.summary().endswith("ETA 30m00s") or "ETA 29m59s" in progress.summary()
    assert Progress(4, stream=io.StringIO()).summary().endswith("ETA ?")


def test_phases_measured_at_the_pending_runs_cpus_a_worker_come_first():
    """Rows of a run whose workers had 2 CPUs measure a 2-CPU run; the 1-CPU rows count only for
    phases the 2-CPU rows never measured. The CPUs come from the runs' manifests."""
    from raypoison.analysis.time_left import with_cpus_per_worker

    rows = _rows().query("status == 'ok'")
    rows = rows.assign(run_id=rows["trial_id"].map({"t1": "run-a", "t2": "run-b"}))
    fast = rows[rows["trial_id"] == "t1"].assign(  # t1 again, as trial t4 on two threads
        trial_id="t4", run_id="run-c", seconds_train=rows["seconds_train"] / 4,
        seconds_defense=rows["seconds_defense"] / 4)
    fast = fast[fast["defense"] == "none"]  # no Pivotal Tuning measured at 2 CPUs
    manifests = [{"run_id": "run-a", "ray": {"cpus_per_worker": 1}},
                 {"run_id": "run-b", "ray": {"cpus_per_worker": 1.0}},
                 {"run_id": "run-c", "ray": {"cpus_per_worker": 2.0}},
                 {"run_id": "broken", "ray": "not a record"}]
    df = with_cpus_per_worker(pd.concat([rows, fast]), manifests)
    assert df.groupby("run_id")["cpus_per_worker"].first().to_dict() == {
        "run-a": 1.0, "run-b": 1.0, "run-c": 2.0}
    pending = [PendingTrial("s", "bn-1500", "badnets", trains=True, defenses=("pt",))]

    two = time_left(df, pending, cpus_per_worker=2)
    assert two.seconds == (3.5 + 30 / 4 + 2) + 225.0  # training from t4 alone; pt from all rows
    assert (two.phases, two.at_same_cpus) == (2, 1)
    assert "; 1 of its 2 phases measured at 2 CPUs a worker, as this run has them;" in two.text(1)
    one = time_left(df, pending, cpus_per_worker=1)
    assert one.seconds == 40.5 + 225.0 and one.at_same_cpus == 2  # as if t4 were not there
    assert "2 of its 2 phases measured at 1 CPU a worker" in one.text(1)
    assert time_left(df, pending).seconds == 35.5 + 225.0  # all three trials' median, 35.5
    assert "CPUs a worker" not in time_left(rows, pending, cpus_per_worker=1).text(1)
