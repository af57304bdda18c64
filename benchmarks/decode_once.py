"""One decode per run against one per worker (execution.share_data): decodes, seconds to the first
trial and the workers' memory, with 1 and 4 workers on the embedded local Ray.

    RAYPOISON_DATA_ROOT=../shared/data python benchmarks/decode_once.py \\
        configs/cifar10-jpeg-cpu.yaml --scenario cifar10-jpeg-resnet-transfer --workers 1 4

Each run computes ``noop`` trials (no poisons, no training) on the scenario's data set, two per
worker, so what it measures is the data path: decoding, shipping the data to the workers and
building their trial contexts. Memory is sampled every 0.2 s over the worker and decode processes
(``ray::TrialWorker``, ``ray::decode_task``): the peak of their summed RSS, and of their summed PSS
(shared pages divided among the processes that map them, so the object store's one copy counts
once, not once per worker). Prints JSON, one object per (workers, share_data).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import yaml

from raypoison.config.suite import parse_suite
from raypoison.execution.runner import RunOptions, run_suite
from raypoison.store.results import read_table

WATCHED = ("ray::TrialWorker", "ray::decode_task")


def _pss(proc: psutil.Process) -> int:
    try:
        for line in Path(f"/proc/{proc.pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class MemoryWatch(threading.Thread):
    """Peak summed RSS and PSS of the watched Ray processes while it runs."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.peak_rss, self.peak_pss = interval, 0, 0
        self.seen: set[int] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = pss = 0
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(proc.info["cmdline"] or ())
                if any(cmd.startswith(w) for w in WATCHED) and proc.info["memory_info"]:
                    rss += proc.info["memory_info"].rss
                    pss += _pss(proc)
                    self.seen.add(proc.pid)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def measure(raw: dict, base: Path, scenario: str, workers: int, share: bool) -> dict:
    raw = {**raw, "scenarios": [dict(s) for s in raw["scenarios"] if s["name"] == scenario]}
    raw["scenarios"][0]["trials"] = 2 * workers
    raw["attacks"] = [{"name": "noop"}]
    raw["defenses"] = []
    raw["execution"] = {**raw.get("execution", {}), "workers": workers,
                        "cpus_per_worker": 2 / workers, "gpus_per_worker": 0,
                        "share_data": share, "progress_seconds": 3600}
    output = tempfile.mkdtemp(prefix="raypoison-decode-")
    watch = MemoryWatch()
    watch.start()
    try:
        summary = run_suite(parse_suite(raw, base), RunOptions(output=output, num_cpus=2,
                                                         progress_stream=io.StringIO()))
    finally:
        watch.stop()
    manifest = json.loads(Path(summary.manifest).read_text())
    started = datetime.fromisoformat(manifest["started_at"])
    finished = read_table(output, ["finished_at"]).column("finished_at").to_pylist()
    data = manifest.get("data", {})
    return {
        "workers": workers, "share_data": share, "trials": summary.computed,
        "decodes_by_the_run": len(data.get("decodes", [])),
        "decodes_by_workers": data.get("worker_decodes"),
        "decode_seconds": [d["seconds"] for d in data.get("decodes", [])],
        "seconds_to_first_trial": round((min(finished) - started).total_seconds(), 1),
        "seconds_total": round(summary.seconds, 1),
        "peak_rss_mib": round(watch.peak_rss / 2**20),
        "peak_pss_mib": round(watch.peak_pss / 2**20),
        "processes_watched": len(watch.seen),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    raw = yaml.safe_load(Path(args.config).read_text())
    base = Path(args.config).parent.resolve()
    for workers in args.workers:
        for share in (False, True):
            print(json.dumps(measure(raw, base, args.scenario, workers, share)), flush=True)
            time.sleep(2)


if __name__ == "__main__":
    main()
