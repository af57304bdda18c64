"""A run's lease on its output: a second driver into a live output refuses, naming the first;
stale leases are taken over; --share lets a second driver in; SIGTERM ends a run like Ctrl-C."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raypoison.cli import main
from raypoison.execution.lease import LEASE_DIR, Lease, LeaseError, LeaseTimes
from raypoison.store import results
from raypoison.store.storage import Location
from tests.conftest import noop_raw, wait_for, write_config

FAST = LeaseTimes(heartbeat_seconds=0.1, stale_seconds=1.0, settle_seconds=0.05)


def _lease(uri: str, run_id: str, share: bool = False, times: LeaseTimes = FAST) -> Lease:
    return Lease(Location.parse(uri), run_id, share=share, times=times)


def test_a_second_run_into_a_live_output_refuses_naming_the_first(tmp_path):
    first = _lease(str(tmp_path), "run-a")
    first.acquire()
    try:
        time.sleep(1.5)  # longer than stale_seconds: only the heartbeat keeps it live
        with pytest.raises(LeaseError) as info:
            _lease(str(tmp_path), "run-b").acquire()
        message = str(info.value)
        assert "run-a" in message and f"pid {os.getpid()}" in message and "--share" in message
        # (a heartbeat may be mid-write: its hidden temporary file is not a lease)
        leases = sorted(p.name for p in (tmp_path / LEASE_DIR).iterdir()
                        if not p.name.startswith("."))
        assert leases == ["run-a.json"]
    finally:
        first.release()
    assert not list((tmp_path / LEASE_DIR).iterdir())  # released
    with _lease(str(tmp_path), "run-b"):  # now it goes on
        assert (tmp_path / LEASE_DIR / "run-b.json").exists()


def test_of_two_drivers_starting_together_exactly_one_goes_on(tmp_path):
    for round_ in range(6):
        out = str(tmp_path / str(round_))
        barrier = threading.Barrier(2)
        won: list[Lease] = []
        refused: list[str] = []

        def start(run_id: str, out: str = out, barrier: threading.Barrier = barrier,
                  won: list = won, refused: list = refused) -> None:
            lease = _lease(out, run_id)
            barrier.wait()
            try:
                lease.acquire()
                won.append(lease)
            except LeaseError as err:
                refused.append(str(err))

        threads = [threading.Thread(target=start, args=(f"r{round_}-{n}",)) for n in "xy"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(refused) == 1, (won, refused)
        assert won[0].run_id in refused[0]
        won[0].release()


def _foreign_lease(folder: Path, run_id: str, host: str, pid: int, age: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id}.json"
    path.write_text(json.dumps({"run_id": run_id, "host": host, "pid": pid, "argv": []}))
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_a_stale_lease_is_taken_over_and_removed(tmp_path):
    folder = tmp_path / LEASE_DIR
    old = _foreign_lease(folder, "silent", "another-host", 1, age=5.0)  # no heartbeat for 5 s
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = _foreign_lease(folder, "killed", socket.gethostname(), dead.pid, age=0.0)
    with _lease(str(tmp_path), "new"):
        assert not old.exists() and not killed.exists()
    live = _foreign_lease(folder, "live", "another-host", 1, age=0.0)
    with pytest.raises(LeaseError, match="run live .host another-host"):
        _lease(str(tmp_path), "newer").acquire()
    assert live.exists()


def test_share_goes_on_beside_a_live_run_and_others_still_refuse(tmp_path):
    with (_lease(str(tmp_path), "first"), _lease(str(tmp_path), "second", share=True),
          pytest.raises(LeaseError, match="run first")):
        _lease(str(tmp_path), "third").acquire()


@pytest.mark.slow
def test_the_lease_works_on_an_object_store(s3_uri):
    times = LeaseTimes(heartbeat_seconds=0.5, stale_seconds=30.0)  # settles 1.1 s (S3 seconds)
    with _lease(s3_uri, "store-a", times=times):
        with pytest.raises(LeaseError, match="run store-a"):
            _lease(s3_uri, "store-b", times=times).acquire()
        location = Location.parse(s3_uri)
        names = [i.path.rsplit("/", 1)[-1] for i in location.list_files(location.join(LEASE_DIR))]
        assert names == ["store-a.json"]  # the refused run removed its own
    with _lease(s3_uri, "store-b", times=times):
        pass


@pytest.mark.slow
def test_a_driver_refuses_a_live_output_and_sigterm_ends_a_run_like_ctrl_c(tmp_path, capsys):
    raw = noop_raw(trials=60, seconds=0.3)
    raw["execution"] = {"workers": 1, "cpus_per_worker": 0, "gpus_per_worker": 0,
                        "flush_seconds": 0.2}
    config = write_config(tmp_path / "c.yaml", raw)
    out = tmp_path / "out"
    driver = subprocess.Popen(
        [sys.executable, "-m", "raypoison.cli", "run", str(config), "--output", str(out),
         "--num-cpus", "1"],
        env=dict(os.environ, RAY_AUTH_MODE="disabled"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: list(out.glob("results/*/*/part-*.parquet")) or driver.poll() is not None)
        leases = list((out / LEASE_DIR).glob("*.json"))
        assert driver.poll() is None and len(leases) == 1
        running = json.loads(leases[0].read_text())["run_id"]

        assert main(["run", str(config), "--output", str(out)]) == 2  # a second driver
        err = capsys.readouterr().err
        assert f"is being written by run {running}" in err and "--share" in err

        driver.send_signal(signal.SIGTERM)
        log, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, log[-2000:]
    assert "interrupted: finished trials are saved" in log
    manifest = json.loads((out / "manifests" / f"run-{running}.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["ray"]["worker_threads"] == [1]  # from the workers' first answers
    kept = results.committed_trials(str(out))
    assert 0 < len(kept) < 60 and manifest["output"]["rows_written"] == len(kept)
    assert not list((out / LEASE_DIR).glob("*.json"))  # the lease went with the run


@pytest.mark.slow
def test_sigterm_while_ray_starts_is_a_stop_not_a_failure(tmp_path):
    """``ray.init`` takes seconds and installs Ray's own SIGTERM handlers while it runs, which
    exit; a stop landing then is still a stop: exit 130, manifest ``interrupted``, no lease left."""
    config = write_config(tmp_path / "c.yaml", noop_raw(trials=4, seconds=0.1))
    out = tmp_path / "out"
    log_path = tmp_path / "driver.log"
    with log_path.open("w") as log_file:
        driver = subprocess.Popen(
            [sys.executable, "-m", "raypoison.cli", "run", str(config), "--output", str(out),
             "--num-cpus", "1"],
            env=dict(os.environ, RAY_AUTH_MODE="disabled"), stdout=log_file,
            stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: list(out.glob("manifests/run-*.json")) or driver.poll() is not None)
            time.sleep(0.3)  # into ray.init, which starts right after the manifest is written
            driver.send_signal(signal.SIGTERM)
            driver.wait(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
    log = log_path.read_text()
    assert "ray: embedded instance" not in log, "the stop came after Ray had started"
    assert driver.returncode == 130, log[-2000:]
    assert "interrupted: finished trials are saved" in log
    (manifest,) = out.glob("manifests/run-*.json")
    assert json.loads(manifest.read_text())["status"] == "interrupted"
    assert not list((out / LEASE_DIR).glob("*.json"))
