"""Progress of a run: a line per interval (done / failed / in flight / rate / ETA), and a bar that
redraws in place when the output is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """``expected``: the wall seconds the run's own rows predict for it (the time left that
    ``raypoison run`` logs at its start), which gives the ETA until the first trial ends."""

    def __init__(self, total: int, *, interval: float = 10.0, stream: TextIO | None = None,
                 expected: float | None = None):
        self.total = total
        self.expected = expected
        self.interval = interval
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = self.failed = self.in_flight = 0
        self.start = time.monotonic()
        self._last_line = self.start
        self._last_bar = 0.0

    def update(self, *, done: int, failed: int, in_flight: int) -> None:
        self.done, self.failed, self.in_flight = done, failed, in_flight
        now = time.monotonic()
        if self.tty and now - self._last_bar >= 0.2:
            self._last_bar = now
            self._bar()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self._line()

    def summary(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        shown = _duration(eta) if self.done < self.total else "0s"
        if not self.done and self.expected is not None:
            shown = f"~{_duration(max(0.0, self.expected - elapsed))} (from earlier rows)"
        return (f"done {self.done}/{self.total} | failed {self.failed} | in flight "
                f"{self.in_flight} | {rate:.2f} trials/s | elapsed {_duration(elapsed)} | "
                f"ETA {shown}")

    def _bar(self) -> None:
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.summary()}")
        self.stream.flush()

    def _line(self) -> None:
        prefix = "\n" if self.tty else ""
        self.stream.write(f"{prefix}progress: {self.summary()}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self._bar()
            self.stream.write("\n")
        self._line()
