"""The driver's scheduler: a bounded ``ray.wait`` loop over long-lived worker actors.

- At most ``max_in_flight`` tasks are submitted at once, spread over the workers that are up (at
  most ``ceil(max_in_flight / workers)`` queued per worker once every worker is up, one each
  before), and tasks are pulled lazily from the
  spec stream, so driver memory does not grow with the number of trials.
- A worker is up once it answers a ping. Workers that Ray cannot place yet get no trials; on an
  autoscaling cluster they are the demand that adds nodes, and they join as the nodes come.
- A worker whose process dies (``RayActorError``) is marked down; its trials go back to the queue
  with one more attempt, up to ``max_attempts``, after which they become failure rows. The worker
  is pinged until it answers again (Ray restarts it, up to its ``max_restarts``); one that stays
  down for ``replace_after`` seconds is killed and replaced by a new worker.
- A worker whose constructor raises (Ray says ``actor_init_failed``; it is never restarted) is
  replaced at once, within the same ``max_replacements``; once they are spent it is retired, and
  when every worker is, the run stops with the constructor's error instead of waiting forever.
- Any other error of a trial task becomes failure rows at once: application errors are not
  retried blindly (inside a trial they are already failure rows, made by the trial itself).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from raypoison.execution.worker import TrialTask
from raypoison.store.rows import STATUS_OK, describe_error, failure_rows

log = logging.getLogger("raypoison")


@dataclass
class _Item:
    task: TrialTask
    attempt: int = 1


@dataclass
class _Worker:
    """A worker actor gets trials only once it has answered a ping: an actor that cannot be
    placed yet (no node has the resources) holds no trials; it is demand for the autoscaler."""

    handle: Any
    load: int = 0
    healthy: bool = False
    down_since: float | None = None  # set when a placed worker was lost
    next_ping: float = 0.0
    ping_ref: Any = None
    answer: dict | None = None  # its latest ping's answer (what it computes with)
    retired: bool = False  # failed to start with no replacement left: no longer pinged


@dataclass
class SchedulerStats:
    submitted: int = 0
    trials_done: int = 0
    trials_failed: int = 0  # done, but with failed or rejected rows
    requeued: int = 0
    worker_failures: int = 0
    workers_replaced: int = 0
    start_failures: int = 0  # workers whose constructor raised
    peak_in_flight: int = 0
    loop_seconds: float = 0.0  # driver time spent in the loop, outside ray.wait
    wait_seconds: float = 0.0
    first_done_seconds: float | None = None  # from the start of run() to the first trial done
    run_seconds: float = 0.0


class Scheduler:
    def __init__(
        self,
        start_worker: Callable[[], Any],
        *,
        workers: int,
        max_in_flight: int,
        max_attempts: int,
        on_rows: Callable[[list[dict]], None],
        on_tick: Callable[[SchedulerStats, int], None] | None = None,
        tick_seconds: float = 1.0,
        ping_seconds: float = 0.5,
        replace_after: float = 30.0,
        max_replacements: int | None = None,
    ):
        self.start_worker = start_worker
        self.workers = [_Worker(start_worker()) for _ in range(workers)]
        self.max_in_flight = max_in_flight
        self.per_worker = max(1, math.ceil(max_in_flight / workers))
        self.max_attempts = max_attempts
        self.on_rows = on_rows
        self.on_tick = on_tick
        self.tick_seconds = tick_seconds
        self.ping_seconds = ping_seconds
        self.replace_after = replace_after
        self.max_replacements = 2 * workers if max_replacements is None else max_replacements
        self.stats = SchedulerStats()
        self._in_flight: dict[Any, tuple[_Item, _Worker]] = {}
        self._pings: dict[Any, _Worker] = {}
        self._retry: deque[_Item] = deque()
        self._last_waiting_log = time.monotonic()

    @property
    def handles(self) -> list[Any]:
        return [w.handle for w in self.workers]

    @property
    def live_handles(self) -> list[Any]:
        """The workers' handles but for those retired (dead since their start failed)."""
        return [w.handle for w in self.workers if not w.retired]

    @property
    def answers(self) -> list[dict]:
        """Each worker's latest ping answer, for those that have answered: known without asking
        again, so a stopped run can still say what its workers computed with."""
        return [w.answer for w in self.workers if w.answer is not None]

    def unfinished(self) -> list[tuple[TrialTask, int]]:
        """The tasks submitted and not finished (in flight, or waiting to be tried again), each
        with its attempt: after a stop, what a run may still hold saved work of."""
        items = [item for item, _ in self._in_flight.values()] + list(self._retry)
        return [(item.task, item.attempt) for item in items]

    def run(self, tasks: Iterator[TrialTask]) -> SchedulerStats:
        tasks = iter(tasks)
        exhausted = False
        started = time.perf_counter()
        while True:
            loop_start = time.perf_counter()
            exhausted = self._dispatch(tasks, exhausted)
            self._tend_workers()
            if not self._in_flight and not self._retry and exhausted:
                break
            waitables = list(self._in_flight) + list(self._pings)
            self.stats.loop_seconds += time.perf_counter() - loop_start
            wait_start = time.perf_counter()
            if waitables:
                timeout = self._wait_timeout()
                ready, _ = ray.wait(waitables, num_returns=1, timeout=timeout)
                if ready and len(waitables) > 1:
                    ready, _ = ray.wait(waitables, num_returns=len(waitables), timeout=0)
            else:  # every worker is down and waiting for its next ping
                ready = []
                time.sleep(self._wait_timeout())
            self.stats.wait_seconds += time.perf_counter() - wait_start
            handle_start = time.perf_counter()
            self._report_waiting()
            for ref in ready:
                if ref in self._in_flight:
                    self._finish_trial(ref)
                else:
                    self._finish_ping(ref)
            if self.on_tick is not None:
                self.on_tick(self.stats, len(self._in_flight))
            self.stats.loop_seconds += time.perf_counter() - handle_start
            if self.stats.first_done_seconds is None and self.stats.trials_done:
                self.stats.first_done_seconds = time.perf_counter() - started
        self.stats.run_seconds = time.perf_counter() - started
        return self.stats

    def _dispatch(self, tasks: Iterator[TrialTask], exhausted: bool) -> bool:
        # a trial queued behind another on one worker cannot move to a worker that comes up
        # later, so workers hold one trial each until every worker is up (with two workers and
        # two trials, both would otherwise wait on the first worker to answer its ping)
        depth = self.per_worker if all(w.healthy or w.retired for w in self.workers) else 1
        while len(self._in_flight) < self.max_in_flight:
            worker = min((w for w in self.workers if w.healthy and w.load < depth),
                         key=lambda w: w.load, default=None)
            if worker is None:
                break
            if self._retry:
                item = self._retry.popleft()
            elif exhausted:
                break
            else:
                try:
                    item = _Item(next(tasks))
                except StopIteration:
                    return True
            ref = worker.handle.run.remote(item.task, item.attempt)
            self._in_flight[ref] = (item, worker)
            worker.load += 1
            self.stats.submitted += 1
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, len(self._in_flight))
        return exhausted

    def _finish_trial(self, ref: Any) -> None:
        """Hand a finished task's rows to ``on_rows``. The task leaves ``_in_flight`` only once
        they are handed over (or it is queued again), so a stop (SIGTERM arrives as
        KeyboardInterrupt, at any line) in between leaves it in :meth:`unfinished`, whose saved
        work the run then keeps, instead of losing its rows."""
        item, worker = self._in_flight[ref]
        try:
            rows = ray.get(ref)
        except RayActorError as err:
            self.stats.worker_failures += 1
            self._mark_down(worker)
            if item.attempt < self.max_attempts:
                self.stats.requeued += 1
                log.warning("worker lost during trial %s (attempt %d); requeued",
                            item.task.specs[0].trial_id, item.attempt)
                self._retry.append(replace(item, attempt=item.attempt + 1))
                self._done_with(ref)
                return
            rows = self._failures(item, f"worker: lost in {item.attempt} attempts; last: {err}")
        except RayError as err:
            rows = self._failures(item, describe_error(err, "worker"))
        self.stats.trials_done += len(item.task.specs)
        self.stats.trials_failed += len({r["trial_id"] for r in rows
                                         if r.get("status") != STATUS_OK})
        self.on_rows(rows)
        self._done_with(ref)

    def _done_with(self, ref: Any) -> None:
        _, worker = self._in_flight.pop(ref)
        worker.load -= 1

    @staticmethod
    def _failures(item: _Item, error: str) -> list[dict]:
        return [row for spec in item.task.specs for row in failure_rows(
            spec, error, run_id=item.task.run_id, attempt=item.attempt)]

    def _mark_down(self, worker: _Worker) -> None:
        if worker.healthy:
            worker.healthy = False
            worker.down_since = time.monotonic()
            worker.next_ping = time.monotonic() + self.ping_seconds

    def _tend_workers(self) -> None:
        now = time.monotonic()
        for i, worker in enumerate(self.workers):
            if worker.healthy or worker.ping_ref is not None or worker.retired:
                continue
            if (worker.down_since is not None and now - worker.down_since > self.replace_after
                    and worker.load == 0):
                self._replace(i)
            elif now >= worker.next_ping:
                worker.ping_ref = worker.handle.ping.remote()
                self._pings[worker.ping_ref] = worker

    def _replace(self, index: int) -> None:
        if self.stats.workers_replaced >= self.max_replacements:
            if not any(w.healthy for w in self.workers):
                raise RuntimeError(
                    f"every worker is down and {self.max_replacements} replacements are used up"
                )
            return
        log.warning("worker %d did not come back in %.0f s; starting a new one", index,
                    self.replace_after)
        self._start_anew(index)

    def _start_anew(self, index: int) -> None:
        """Kill worker ``index`` (it may be gone already) and start a new one in its place."""
        with contextlib.suppress(Exception):
            ray.kill(self.workers[index].handle, no_restart=True)
        self.workers[index] = _Worker(self.start_worker())
        self.stats.workers_replaced += 1

    def _finish_ping(self, ref: Any) -> None:
        worker = self._pings.pop(ref)
        worker.ping_ref = None
        try:
            answer = ray.get(ref)
        except RayActorError as err:
            if err.actor_init_failed:
                self._failed_start(worker, err)
            else:
                worker.next_ping = time.monotonic() + self.ping_seconds
            return
        except RayError:
            worker.next_ping = time.monotonic() + self.ping_seconds
            return
        worker.answer = answer if isinstance(answer, dict) else None
        if worker.down_since is not None:
            log.info("a worker is back after %.1f s", time.monotonic() - worker.down_since)
        worker.healthy, worker.down_since = True, None

    def _failed_start(self, worker: _Worker, err: RayActorError) -> None:
        """A worker whose constructor raised is dead for good, and Ray restarts none: pinging it
        would wait forever (the run used to, saying its workers were not placed yet). Start
        another while replacements last; once they are spent, retire it, and once every worker
        is retired, stop the run with the cause. (Workers still starting or waiting for a node
        are not counted as failed: they may yet come up.)"""
        self.stats.start_failures += 1
        cause = _last_line(str(err))
        index = next(i for i, w in enumerate(self.workers) if w is worker)
        if self.stats.workers_replaced < self.max_replacements:
            log.warning("worker %d failed to start (%s); starting a new one", index, cause)
            self._start_anew(index)
            return
        with contextlib.suppress(Exception):
            ray.kill(worker.handle, no_restart=True)
        worker.retired = True
        if all(w.retired for w in self.workers):
            raise RuntimeError(f"workers fail to start ({self.stats.start_failures} tries, "
                               f"replacements used up): {cause}")
        log.error("worker %d failed to start (%s); going on with the others", index, cause)

    def _report_waiting(self) -> None:
        """Say so, once a minute, while work is waiting for workers that cannot be placed."""
        now = time.monotonic()
        waiting = sum(1 for w in self.workers if not w.healthy and not w.retired)
        if waiting and now - self._last_waiting_log >= 60:
            self._last_waiting_log = now
            log.warning("%d of %d workers are not placed yet (waiting for resources; on an "
                        "autoscaling cluster this is the demand for new nodes)", waiting,
                        len(self.workers))

    def _wait_timeout(self) -> float:
        pending = [w.next_ping for w in self.workers
                   if not w.healthy and w.ping_ref is None and not w.retired]
        if not pending:
            return self.tick_seconds
        return max(0.01, min(self.tick_seconds, min(pending) - time.monotonic()))


def _last_line(text: str) -> str:
    """The last line of an error's text (where Ray's creation-task traceback names the cause),
    without terminal colour codes."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()]
    return next((line for line in reversed(lines) if line), text)[:500]
