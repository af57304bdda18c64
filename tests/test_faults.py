"""Faults on a real local Ray: a worker process killed mid-run, and the driver killed mid-run."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from raypoison.config.suite import parse_suite
from raypoison.execution.runner import RunOptions, run_suite
from raypoison.store import results
from tests.conftest import noop_raw, wait_for, write_config


def _parts(folder: Path) -> list[Path]:
    return list(folder.glob("results/*/*/part-*.parquet"))


def _busy_trial_workers() -> list[psutil.Process]:
    """This test cluster's worker processes running a trial right now: children of its raylet
    that Ray titles ``ray::TrialWorker.run`` (other Ray instances on the machine are left be)."""
    from ray._private import ray_constants
    from ray._private.worker import _global_node

    raylet = _global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    found = []
    for p in psutil.Process(raylet).children(recursive=True):
        try:
            if any("TrialWorker.run" in part for part in p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_killed_worker_loses_no_trial_and_repeats_none(ray_cluster, tmp_path):
    raw = noop_raw(trials=40, seconds=0.25)
    raw["execution"] = {"workers": 2, "cpus_per_worker": 0, "gpus_per_worker": 0.25,
                        "flush_seconds": 0.3, "max_attempts": 3, "max_restarts": 3}
    killed: list[int] = []

    def assassin():
        wait_for(lambda: len(_parts(tmp_path)) >= 1 and _busy_trial_workers())
        victim = _busy_trial_workers()[0]
        killed.append(victim.pid)
        victim.send_signal(signal.SIGKILL)

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    summary = run_suite(parse_suite(raw), RunOptions(output=str(tmp_path)))
    thread.join(timeout=5)
    assert killed, "no worker was killed"
    assert summary.scheduler["worker_failures"] >= 1 and summary.scheduler["requeued"] >= 1
    raw_rows = results.read_table(str(tmp_path)).to_pandas()
    assert len(raw_rows) == 40 and raw_rows["trial_id"].is_unique  # nothing written twice
    assert set(raw_rows["status"]) == {"ok"}
    assert (raw_rows["attempt"] >= 2).any()  # the interrupted trial ran again


@pytest.mark.slow
def test_killed_driver_resumes_without_recomputing(ray_cluster, tmp_path):
    raw = noop_raw(trials=80, seconds=0.2)
    raw["execution"] = {"workers": 2, "cpus_per_worker": 0, "gpus_per_worker": 0,
                        "flush_seconds": 0.3}
    config = write_config(tmp_path / "c.yaml", raw)
    out = tmp_path / "out"
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    driver = subprocess.Popen(
        [sys.executable, "-m", "raypoison.cli", "run", str(config), "--output", str(out),
         "--num-cpus", "2"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(_parts(out)) >= 2 or driver.poll() is not None)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray instance it started
        driver.wait()
    before = results.committed_trials(str(out))
    assert 0 < len(before) < 80, len(before)

    summary = run_suite(parse_suite(raw), RunOptions(output=str(out)))
    assert (summary.skipped, summary.computed) == (len(before), 80 - len(before))
    rows = results.read_table(str(out)).to_pandas()
    assert len(rows) == 80 and rows["trial_id"].is_unique  # every trial exactly once
    resumed = rows[rows["run_id"] == summary.run_id]
    assert set(resumed["trial_id"]).isdisjoint(before)
    assert len(list((out / "manifests").glob("run-*.json"))) == 2
    manifest = (out / "manifests" / f"run-{summary.run_id}.json").read_text()
    assert f'"skipped_already_done": {len(before)}' in manifest
