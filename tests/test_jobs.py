"""`ray job submit` end to end: a real head node with its job server, a benchmark submitted as a
job through jobs/run.py, its results read back, and a second submission that resumes."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from raypoison.store import results
from tests.conftest import free_port, noop_raw, write_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def head_node(tmp_path_factory):
    """``ray start --head --block`` in its own process group, every port chosen free (another
    Ray instance on the machine must not collide with it), stopped by signalling the group."""
    ports = {name: free_port() for name in (
        "port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "ray-client-server-port", "runtime-env-agent-port",
        "node-manager-port", "object-manager-port")}
    temp = Path(tempfile.mkdtemp(prefix="rpj-", dir="/tmp"))  # short: Ray's sockets live here
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp}",
               *(f"--{name}={port}" for name, port in ports.items())]
    head = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while True:  # until the dashboard, which serves the job API, answers
        try:
            socket.create_connection(("127.0.0.1", ports["dashboard-port"]), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or head.poll() is not None:
                os.killpg(head.pid, signal.SIGKILL)
                raise RuntimeError("the Ray head node did not come up") from None
            time.sleep(0.5)
    yield f"http://127.0.0.1:{ports['dashboard-port']}"
    # Ray's own shutdown on SIGTERM takes about 33 s here; the test is over, so the group
    # (every process the head started: none outlives it) is killed after a short grace
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=3)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    shutil.rmtree(temp, ignore_errors=True)


def _submit(address: str, config: Path, output: Path) -> subprocess.CompletedProcess:
    runtime_env = json.dumps({"working_dir": str(REPO),
                              "excludes": [".venv", "runs", ".git", "*.egg-info"]})
    command = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", address,
               "--runtime-env-json", runtime_env, "--",
               sys.executable, "jobs/run.py", str(config), "--output", str(output)]
    deadline = time.monotonic() + 120
    while True:  # a new head's job agent takes a few seconds to come up
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
        if "No available agent" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(2)


@pytest.mark.slow
def test_a_submitted_job_runs_the_benchmark_and_a_resubmission_resumes(head_node, tmp_path):
    raw = noop_raw(trials=12, seconds=0.0, victims=2)
    raw["execution"] = {"workers": 2, "cpus_per_worker": 0, "gpus_per_worker": 0,
                        "flush_seconds": 0.5}
    config = write_config(tmp_path / "job.yaml", raw)
    out = tmp_path / "out"
    first = _submit(head_node, config, out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "12 computed" in first.stdout
    df = results.load(str(out))
    assert len(df) == 24 and not df.duplicated(["trial_id", "victim"]).any()
    manifest = json.loads(next((out / "manifests").glob("run-*.json")).read_text())
    assert manifest["ray"]["mode"] == "cluster"  # it joined the job's cluster
    second = _submit(head_node, config, out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "12 already done, 0 computed" in second.stdout
    assert len(results.load(str(out))) == 24
