"""How long a resumed run takes to learn what its output already holds, and a report to read it.

    python benchmarks/resume_scan.py --trials 25000 --rows-per-file 200

Writes ``--trials`` trials of two victims each (rows with the columns a trial fills that decide
what is stored: keys, status, success, accuracy) through the real sink into a temporary folder,
then times the three readers once each: ``committed_trials`` (keys and status), ``stored_trials``
(what ``raypoison run`` calls to plan a resume: per trial, whether its undefended rows are there
and which defenses it has) and ``load`` (every column, deduplicated, as the report reads them).
Every reader decodes whole parts and checks their page checksums, so the figures include that.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime

from raypoison.store import results
from raypoison.store.rows import SCHEMA_VERSION
from raypoison.store.sink import ParquetSink
from raypoison.store.storage import Location


def write(folder: str, trials: int, rows_per_file: int) -> int:
    sink = ParquetSink(Location.parse(folder), "scan", rows_per_file=rows_per_file)
    finished = datetime(2026, 1, 1, tzinfo=UTC)
    for t in range(trials):
        sink.add([{"schema_version": SCHEMA_VERSION, "trial_id": f"t{t:07d}", "victim": victim,
                   "scenario": "s", "attack": "a", "trial": t, "status": "ok",
                   "success": t % 3 == 0, "clean_accuracy": 0.9, "finished_at": finished}
                  for victim in ("v1", "v2")])
    sink.flush()
    return sink.files_written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=25_000)
    parser.add_argument("--rows-per-file", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = write(folder, args.trials, args.rows_per_file)
        figures: dict[str, object] = {"trials": args.trials, "rows": 2 * args.trials,
                                      "files": files}
        for reader in (results.committed_trials, results.stored_trials, results.load):
            tick = time.perf_counter()
            found = len(reader(folder))
            figures[reader.__name__] = {"seconds": round(time.perf_counter() - tick, 2),
                                        "found": found}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
