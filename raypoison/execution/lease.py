"""A run's lease on its output: one driver writes an output at a time, unless told to share.

Two drivers into one output would each compute every trial (readers deduplicate, so nothing
looks wrong, but the compute is spent twice). So each run holds a lease while it plans and
runs: a file ``OUTPUT/leases/<run_id>.json`` naming the run, its host, process and command,
rewritten every ``heartbeat_seconds`` by a background thread and removed when the run ends.

- **Live or stale.** A lease is stale when its file was last written more than
  ``stale_seconds`` before this run's own lease file was (both times come from the storage, so
  the clocks of different machines are never compared), or when it names a process of this host
  that no longer exists (a driver killed with SIGKILL is taken over at once). Stale leases are
  removed by the next run.
- **Who goes on.** A run writes its lease first, waits ``settle_seconds`` (longer than the
  store's timestamp resolution: S3 keeps whole seconds), then lists the leases. It refuses, and
  removes its own, when another live lease claimed the output earlier; claims are ordered by
  (the storage time of a lease's first write, run id). Any lease written before mine is visible
  when I list, so of two drivers starting at the same moment exactly one goes on, on a local
  disk and on an object store alike, without a conditional write (pyarrow offers none).
- **Sharing.** ``share=True`` (``raypoison run --share``) writes its lease and goes on beside
  any other; a run without it still refuses while a shared one is live.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow.fs as pafs

from raypoison.errors import RaypoisonError
from raypoison.store.storage import Location

log = logging.getLogger("raypoison")

LEASE_DIR = "leases"


class LeaseError(RaypoisonError):
    """Another live run holds the output."""


@dataclass(frozen=True)
class LeaseTimes:
    heartbeat_seconds: float = 10.0
    stale_seconds: float = 60.0
    settle_seconds: float | None = None  # None: 0.05 s on a local disk, 1.1 s on a store


@dataclass(frozen=True)
class _Seen:
    path: str
    mtime_ns: int
    content: dict[str, Any]

    @property
    def claim(self) -> tuple[int, str]:
        claimed = self.content.get("claimed_ns")
        return (claimed if isinstance(claimed, int) else self.mtime_ns,
                str(self.content.get("run_id", "")))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


class Lease:
    """Hold ``location``'s lease for ``run_id`` (a context manager: acquire, heartbeat, release)."""

    def __init__(self, location: Location, run_id: str, *, share: bool = False,
                 times: LeaseTimes = LeaseTimes()):
        self.location = location
        self.run_id = run_id
        self.share = share
        self.times = times
        self.path = location.join(LEASE_DIR, f"{run_id}.json")
        self.content: dict[str, Any] = {
            "run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
            "argv": sys.argv[:20], "share": share,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Write this run's lease; refuse (``LeaseError``) if another live run claimed first."""
        self._write()
        mine = self._stat(self.path)
        self.content["claimed_ns"] = mine
        self._write()
        settle = self.times.settle_seconds
        time.sleep(settle if settle is not None else (0.05 if self.location.is_local else 1.1))
        now = self._stat(self.path)  # the storage's clock: the reference for staleness
        me = (mine, self.run_id)
        for other in self._others():
            if self._stale(other, now):
                log.info("removing the stale lease %s", other.path)
                self._delete(other.path)
                continue
            if other.claim > me:
                continue  # it claimed later: it yields to this run
            if self.share:
                log.warning("%s is also being written by run %s; going on beside it (--share)",
                            self.location.uri, other.content.get("run_id"))
                continue
            self._delete(self.path)
            raise LeaseError(self._refusal(other, now))
        self._thread = threading.Thread(target=self._beat, name="raypoison-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._delete(self.path)

    def _refusal(self, other: _Seen, now: int) -> str:
        c = other.content
        ago = max(0.0, (now - other.mtime_ns) / 1e9)
        command = " ".join(str(a) for a in c.get("argv", []))[:300]
        return (f"{self.location.uri} is being written by run {c.get('run_id')} (host "
                f"{c.get('host')}, pid {c.get('pid')}, started {c.get('started_at')}, last "
                f"heartbeat {ago:.0f} s ago; command: {command}). Wait for it to finish, stop it, "
                f"or pass --share to run beside it (both then compute the trials neither has "
                f"written). Its lease is {other.path}; it counts as stale "
                f"{self.times.stale_seconds:.0f} s after its last heartbeat.")

    def _stale(self, other: _Seen, now: int) -> bool:
        if other.mtime_ns < now - int(self.times.stale_seconds * 1e9):
            return True
        pid = other.content.get("pid")
        return (other.content.get("host") == socket.gethostname() and isinstance(pid, int)
                and not _process_exists(pid))

    def _others(self) -> list[_Seen]:
        seen = []
        for info in self.location.list_files(self.location.join(LEASE_DIR)):
            if info.path.rstrip("/") == self.path or not info.path.endswith(".json"):
                continue
            try:
                content = json.loads(self.location.read_bytes(info.path))
            except (OSError, ValueError):
                continue  # removed meanwhile, or being written: the next look sees it
            if isinstance(content, dict):
                seen.append(_Seen(info.path, info.mtime_ns or 0, content))
        return seen

    def _beat(self) -> None:
        while not self._stop.wait(self.times.heartbeat_seconds):
            try:
                if not self.location.exists(self.path):
                    log.warning("the lease %s was removed by another run (this driver was "
                                "silent for %.0f s or more); writing it again", self.path,
                                self.times.stale_seconds)
                self.content["heartbeat_at"] = datetime.now(UTC).isoformat(timespec="seconds")
                self._write()
            except Exception as err:  # a flaky store: the next beat tries again
                log.warning("could not renew the lease %s: %s", self.path, err)

    def _write(self) -> None:
        self.location.write_bytes(self.path, json.dumps(self.content, indent=2).encode())

    def _stat(self, path: str) -> int:
        info = self.location.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound or info.mtime_ns is None:
            raise LeaseError(f"the lease {path} vanished right after it was written")
        return info.mtime_ns

    def _delete(self, path: str) -> None:
        with contextlib.suppress(OSError):  # already gone
            self.location.fs.delete_file(path)

