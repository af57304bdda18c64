"""ParquetSink: rows from the workers -> immutable part files, written atomically by the driver.

Rows are buffered per partition (``scenario=…/attack=…``) and a partition is written as one part
file when it holds ``rows_per_file`` rows, when its oldest row has waited ``flush_seconds``, or at
the end. A trial's rows always land in the same file, so a trial is either wholly on disk or not.
"""

from __future__ import annotations

import time
from collections import defaultdict

from raypoison.errors import ResultsError
from raypoison.store.results import PART_PREFIX, RESULTS_DIR
from raypoison.store.rows import part_bytes, to_table
from raypoison.store.storage import Location


class ParquetSink:
    def __init__(self, location: Location, run_id: str, *, rows_per_file: int = 2000,
                 flush_seconds: float = 10.0):
        self.location = location
        self.run_id = run_id
        self.rows_per_file = rows_per_file
        self.flush_seconds = flush_seconds
        self._buffers: dict[tuple[str, str], list[dict]] = defaultdict(list)
        self._oldest: dict[tuple[str, str], float] = {}
        self._sequence = 0
        self.files_written = 0
        self.rows_written = 0
        self.rows_lost = 0  # rows whose write failed (they are computed again by a rerun)

    def add(self, rows: list[dict]) -> None:
        """Buffer rows, each in its own partition (a task's rows share one, so they land in the
        same file; a part never holds a row its folder does not name, which readers refuse)."""
        touched: list[tuple[str, str]] = []
        for row in rows:
            key = (row["scenario"], row["attack"])
            if key not in touched:
                touched.append(key)
            self._buffers[key].append(row)
            self._oldest.setdefault(key, time.monotonic())
        for key in touched:
            if len(self._buffers[key]) >= self.rows_per_file:
                self._write(key)

    def flush_due(self) -> None:
        """Write every partition whose oldest buffered row has waited long enough."""
        limit = time.monotonic() - self.flush_seconds
        for key in [k for k, t in self._oldest.items() if t <= limit]:
            self._write(key)

    def flush(self) -> None:
        for key in list(self._buffers):
            self._write(key)

    def _write(self, key: tuple[str, str]) -> None:
        """Write one partition's buffer as a part. The rows leave the buffer only once written
        (or lost to a write error, counted), so a stop in between (SIGTERM arrives as
        KeyboardInterrupt, at any line) leaves them for the last :meth:`flush`; at worst a
        part is written twice, which readers deduplicate."""
        rows = self._buffers.get(key, [])
        if not rows:
            self._forget(key)
            return
        scenario, attack = key
        self._sequence += 1
        name = f"{PART_PREFIX}{self.run_id}-{self._sequence:06d}.parquet"
        path = self.location.join(RESULTS_DIR, f"scenario={scenario}", f"attack={attack}", name)
        try:
            self.location.write_bytes(path, part_bytes(to_table(rows)))
        except OSError as err:
            self._forget(key)
            self.rows_lost += len(rows)
            raise ResultsError(
                f"could not write {len(rows)} rows of scenario={scenario}/attack={attack} to "
                f"{path} ({err}); {self.rows_lost} rows of this run are not in the output, and "
                "running the same command again computes them") from err
        self._forget(key)
        self.files_written += 1
        self.rows_written += len(rows)

    def _forget(self, key: tuple[str, str]) -> None:
        self._buffers.pop(key, None)
        self._oldest.pop(key, None)
