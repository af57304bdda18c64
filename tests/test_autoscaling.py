"""The worker pool on a cluster whose nodes come and go (Ray's multi-node test cluster, in a
process of its own): workers that cannot be placed wait as demand, start as GPU nodes join, and a
node that leaves mid-run loses no trial."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pool_grows_as_nodes_join_and_a_leaving_node_loses_no_trial(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tests.autoscaling_run", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    events = report["events"]
    assert len(events["first_nodes"]) == 1  # nothing ran before a GPU node joined
    assert len(events["nodes_before_removal"]) == 2  # more workers started as a node joined
    assert report["nodes"] >= 2 and report["workers"] >= 3
    assert report["worker_failures"] >= 1 and report["requeued"] >= 1  # the node left mid-run
    assert report["rows"] == report["unique_trials"] == 160  # every trial exactly once
    assert report["statuses"] == ["ok"] and report["computed"] == 160
