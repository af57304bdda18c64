"""Helper for test_autoscaling.py, run in its own process (it owns a multi-node Ray cluster).

A head without GPUs, then GPU nodes that join while the benchmark runs, and one that leaves.
Prints one JSON line with what happened.
"""

import json
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster

from raypoison.config.suite import parse_suite
from raypoison.execution.runner import RunOptions, run_suite
from raypoison.store import results
from tests.conftest import noop_raw


def nodes_with_rows(output: str) -> set[str]:
    try:
        return set(results.read_table(output, ["trial_id", "node"]).column("node").to_pylist())
    except Exception:
        return set()


def main(output: str) -> None:
    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    raw = noop_raw(trials=160, seconds=0.25)
    raw["execution"] = {"workers": 4, "cpus_per_worker": 0, "gpus_per_worker": 1,
                        "flush_seconds": 0.3, "max_attempts": 4, "max_restarts": 4}
    events: dict = {}
    outcome: dict = {}

    def run() -> None:
        outcome["summary"] = run_suite(parse_suite(raw), RunOptions(output=output))

    # the run goes on in a thread; nodes come and go from the main thread, as Ray requires
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(3)
    first = cluster.add_node(num_cpus=1, num_gpus=2)  # room for two workers
    while not nodes_with_rows(output):
        time.sleep(0.2)
    events["first_nodes"] = sorted(nodes_with_rows(output))
    cluster.add_node(num_cpus=1, num_gpus=2)  # room for the other two
    while len(nodes_with_rows(output)) < 2:
        time.sleep(0.2)
    events["nodes_before_removal"] = sorted(nodes_with_rows(output))
    cluster.remove_node(first)  # its two workers die mid-run
    thread.join(timeout=400)
    summary = outcome["summary"]
    table = results.read_table(output, ["trial_id", "node", "worker", "attempt", "status"])
    frame = table.to_pandas()
    print(json.dumps({
        "computed": summary.computed, "rows": len(frame),
        "unique_trials": int(frame["trial_id"].nunique()),
        "statuses": sorted(set(frame["status"])), "nodes": int(frame["node"].nunique()),
        "workers": int(frame["worker"].nunique()),
        "worker_failures": summary.scheduler["worker_failures"],
        "requeued": summary.scheduler["requeued"], "events": events,
    }))
    ray.shutdown()  # the driver lets go of the head before the cluster is taken down
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
