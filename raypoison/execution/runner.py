"""One run of a benchmark: config -> pending trial specs -> workers -> rows -> Parquet + manifest.

A run is resumable by construction: trials whose id already has rows in the output are skipped
(``--retry-failed`` also recomputes trials with failed or rejected rows), and every invocation
writes its own manifest under ``<output>/manifests/``, saying how many trials it planned, skipped
and computed. A trial is durable once its part file is written (at most ``flush_seconds`` after it
finishes); a driver killed before then loses those trials and the next run computes them again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray

from raypoison import PROTOCOL_VERSION, __version__
from raypoison.analysis import run_status
from raypoison.analysis.time_left import (
    COLUMNS,
    PendingTrial,
    TimeLeft,
    time_left,
    with_cpus_per_worker,
)
from raypoison.attacks import ATTACKS
from raypoison.config.specs import TrialSpec, expand
from raypoison.config.suite import SuiteConfig
from raypoison.core.identity import defense_key
from raypoison.core.schema import to_plain
from raypoison.execution.checkpoints import check_checkpoint_files, prepare_checkpoints
from raypoison.execution.cluster import RaySession, ray_session
from raypoison.execution.datasets import SharedDatasets
from raypoison.execution.lease import Lease, LeaseTimes
from raypoison.execution.progress import Progress
from raypoison.execution.scheduler import Scheduler
from raypoison.execution.worker import TrialTask, start_worker
from raypoison.store import results
from raypoison.store.results import Stored, stored_trials
from raypoison.store.rows import STATUS_FAILED, STATUS_REJECTED, check_rows, stamp
from raypoison.store.sink import ParquetSink
from raypoison.store.storage import Location
from raypoison.trial.run import saved_rows
from raypoison.trial.victims import VictimStore

log = logging.getLogger("raypoison")


@dataclass
class RunOptions:
    output: str
    address: str | None = None
    attacks: list[str] | None = None
    scenarios: list[str] | None = None
    trials: range | None = None
    defenses: list[str] | None = None  # only these defense labels of the suite ("none": none)
    retry_failed: bool = False
    save_poisons: bool = False  # export poisons to OUTPUT/poisons/ in the reference folder format
    workers: int | None = None
    cpus_per_worker: float | None = None  # overrides execution.cpus_per_worker (and its threads)
    num_cpus: int | None = None  # embedded instance only
    num_gpus: float | None = None  # embedded instance only (logical GPUs are fine for tests)
    dashboard: bool = False
    config_path: str | None = None
    progress_stream: Any = None
    share: bool = False  # go on beside another live run into the same output
    lease_times: LeaseTimes = field(default_factory=LeaseTimes)


@dataclass
class RunSummary:
    run_id: str
    status: str
    planned: int = 0
    skipped: int = 0
    computed: int = 0
    failed: int = 0
    rows_written: int = 0
    files_written: int = 0
    seconds: float = 0.0
    manifest: str = ""
    scheduler: dict[str, Any] = field(default_factory=dict)
    salvaged: int = 0  # rows of stopped trials' finished work, written at the stop
    # the errors of this run's failed and rejected rows, most common first: (count, error)
    errors: list[tuple[int, str]] = field(default_factory=list)


def _error_key(row: dict) -> str:
    """A failed row's error as it groups with its like: the first line, cut to 300 characters."""
    text = str(row.get("error") or row.get("poison_check") or row.get("status"))
    return (text.splitlines() or [text])[0][:300]


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def _git_revision() -> str | None:
    """The revision of the raypoison checkout in use, if it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import pyarrow
    import torch

    return {"raypoison": __version__, "protocol": PROTOCOL_VERSION, "ray": ray.__version__,
            "torch": torch.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version()}


def plan_trial(spec: TrialSpec, stored: Stored | None, include_failed: bool) -> TrialSpec | None:
    """What is left to compute of ``spec`` given what the output holds: None (nothing), the
    whole trial, or (undefended rows stored, some of the suite's defenses missing) the trial
    with only the missing defenses and ``write_undefended`` False. Without saved victims that
    trial crafts and trains again (deterministically, with its own seeds) to run them, and only
    the new defense rows are written; failed and rejected trials count as stored unless
    ``include_failed`` is False, and a trial that trains nothing never has defense rows."""
    if stored is None:
        return spec
    if stored.failed and not include_failed and not stored.undefended_ok:
        return spec
    if not stored.undefended_ok or not spec.defenses or not ATTACKS.get(spec.attack.name).needs_models:
        return None
    missing = tuple(d for d in spec.defenses if defense_key(d) not in stored.defenses)
    if not missing:
        return None
    return dataclasses.replace(spec, defenses=missing, write_undefended=False)


def _pending(suite: SuiteConfig, options: RunOptions, done: dict[str, Stored]
             ) -> Iterator[TrialSpec]:
    for spec in expand(suite, attacks=options.attacks, scenarios=options.scenarios,
                       trials=options.trials, defenses=options.defenses):
        todo = plan_trial(spec, done.get(spec.trial_id), not options.retry_failed)
        if todo is not None:
            yield todo


def batches(specs: Iterator[TrialSpec], size: int) -> Iterator[tuple[TrialSpec, ...]]:
    """Group a spec stream into batches of up to ``size`` trials of one scenario and attack.

    The stream interleaves attacks (trial 0 of each, then trial 1 …), so one buffer per attack
    fills up; buffers are emitted when full and whenever the scenario changes or the stream ends.
    """
    buffers: dict[str, list[TrialSpec]] = {}
    scenario = None
    for spec in specs:
        if spec.scenario.name != scenario:
            yield from (tuple(b) for b in buffers.values() if b)
            buffers, scenario = {}, spec.scenario.name
        buffer = buffers.setdefault(spec.attack.label, [])
        buffer.append(spec)
        if len(buffer) == size:
            yield tuple(buffer)
            buffer.clear()
    yield from (tuple(b) for b in buffers.values() if b)


def _cpus_per_worker(suite: SuiteConfig, options: RunOptions) -> float:
    ex = suite.execution
    return ex.cpus_per_worker if options.cpus_per_worker is None else options.cpus_per_worker


def _worker_plan(suite: SuiteConfig, options: RunOptions,
                 session: RaySession) -> tuple[int, float, float]:
    """How many workers, with how many CPUs and GPUs each, for this cluster."""
    ex = suite.execution
    workers = options.workers or ex.workers
    cpus = _cpus_per_worker(suite, options)
    gpus = ex.gpus_per_worker
    have_cpu = session.resources.get("CPU", 0.0)
    have_gpu = session.resources.get("GPU", 0.0)
    if session.mode != "embedded":
        return workers, cpus, gpus  # what cannot be placed yet is demand for the autoscaler
    if gpus > 0 and have_gpu == 0:
        log.info("no GPUs in the local Ray instance: workers run on the CPU")
        gpus = 0.0
    fits = [workers]
    if cpus > 0:
        fits.append(int(have_cpu // cpus))
    if gpus > 0:
        fits.append(int(have_gpu // gpus))
    return max(1, min(fits)), cpus, gpus


class _Manifest:
    def __init__(self, location: Location, run_id: str, content: dict[str, Any]):
        self.location = location
        self.path = location.join("manifests", f"run-{run_id}.json")
        self.content = content

    def write(self, **updates: Any) -> None:
        self.content.update(updates)
        self.location.write_bytes(self.path, json.dumps(self.content, indent=2,
                                                        default=str).encode())


@dataclass
class _Plan:
    """What a run will compute: counts for the log and the manifest, and the stored trials."""
    done: dict[str, Stored]
    planned: int = 0
    skipped: int = 0
    for_defenses: int = 0
    from_saved: int = 0  # of for_defenses, those whose victims are saved
    resumed: int = 0  # trials without rows whose victims are saved (stopped after training)
    scenarios_needing_models: list[Any] = field(default_factory=list)
    scenarios_pending: list[Any] = field(default_factory=list)  # with trials to run
    pending: list[PendingTrial] = field(default_factory=list)  # what each pending trial computes


def _record_worker_pings(manifest: _Manifest, handles: list[Any]) -> None:
    """How many data sets the live workers decoded themselves (0 when they all shared the run's
    decode), into the manifest's ``data`` record, and the PyTorch threads each computed with,
    into its ``ray`` record."""
    try:
        pings = ray.get([h.ping.remote() for h in handles], timeout=30)
    except Exception as err:  # a worker that cannot answer does not fail a finished run
        log.warning("could not ask the workers what they decoded (%s)", err)
        return
    manifest.write(data={**manifest.content.get("data", {"shared": False}),
                         "worker_decodes": sum(p.get("decodes", 0) for p in pings),
                         "workers_asked": len(pings)},
                   ray={**manifest.content.get("ray", {}), **_worker_records(pings)})


def _worker_records(answers: list[dict]) -> dict[str, list]:
    """From the workers' ping answers, the manifest's record of what they computed with: the
    PyTorch threads of each, and each one's device (``cpu``, ``cuda`` with the GPU's name, or
    ``cpu`` with the GPU Ray assigned but PyTorch could not use)."""
    def device(answer: dict) -> str:
        name = str(answer.get("device", "unknown"))
        if answer.get("gpu_name"):
            cap = answer.get("memory_cap")
            return f"{name} ({answer['gpu_name']}" + (
                f", memory capped at {100 * cap:.1f}%)" if cap else ")")
        if answer.get("gpu_ids") and name != "cuda":
            return f"{name} (Ray's GPU {', '.join(map(str, answer['gpu_ids']))} unused: no CUDA)"
        return name

    return {"worker_threads": sorted(a.get("threads", 0) for a in answers),
            "worker_devices": sorted(device(a) for a in answers)}


# how a pending trial will be computed (``raypoison run --dry-run`` prints it)
WORK_NEW = "craft and train"
WORK_RESUME = "resume at its defenses on the saved victims"
WORK_ADD_SAVED = "add defenses on the saved victims"
WORK_ADD_RETRAIN = "craft and train again (no saved victims here), then add defenses"


def work_of(todo: TrialSpec, store: VictimStore, save_poisons: bool) -> str:
    """How a pending trial (:func:`plan_trial`'s answer) will be computed with this output's
    saved victims: one of the ``WORK_*`` phrases."""
    if not todo.write_undefended:
        return WORK_ADD_SAVED if store.has(todo) else WORK_ADD_RETRAIN
    if not save_poisons and store.has(todo):
        return WORK_RESUME
    return WORK_NEW


def pending_trial(todo: TrialSpec, work: str) -> PendingTrial:
    """What ``todo`` still computes, as :mod:`raypoison.analysis.time_left` estimates it."""
    return PendingTrial(todo.scenario.name, todo.attack.label, todo.attack.name,
                        trains=work in (WORK_NEW, WORK_ADD_RETRAIN),
                        defenses=tuple(d.label for d in todo.defenses))


def pending_work(suite: SuiteConfig, options: RunOptions) -> tuple[int, list[tuple[TrialSpec, str]]]:
    """What a run with these options would compute, without running or writing anything: the
    number of trials the filters select, and each pending trial (with only its missing defenses)
    with how it will be computed (:func:`work_of`). A long run that lands over several sessions
    or machines reads its remaining work here."""
    location = Location.parse(options.output)
    done = stored_trials(options.output, include_failed=not options.retry_failed)
    walked = list(_walk(suite, options, done, VictimStore(location.child_uri("victims"))))
    return len(walked), [(todo, work) for _, todo, work in walked
                         if todo is not None and work is not None]


def _walk(suite: SuiteConfig, options: RunOptions, done: dict[str, Stored], store: VictimStore
          ) -> Iterator[tuple[TrialSpec, TrialSpec | None, str | None]]:
    """Each trial the filters select, with what is left of it (:func:`plan_trial`) and how it
    will be computed (:func:`work_of`; None when nothing is left)."""
    for spec in expand(suite, attacks=options.attacks, scenarios=options.scenarios,
                       trials=options.trials, defenses=options.defenses):
        todo = plan_trial(spec, done.get(spec.trial_id), not options.retry_failed)
        yield spec, todo, (None if todo is None else work_of(todo, store, options.save_poisons))


def _plan(suite: SuiteConfig, options: RunOptions, location: Location) -> _Plan:
    """One lazy pass over the suite's trials against what the output holds; also validates the
    filters."""
    plan = _Plan(stored_trials(options.output, include_failed=not options.retry_failed))
    needing_models: dict[str, Any] = {}  # scenarios with pending trials that load models
    pending: dict[str, Any] = {}
    store = VictimStore(location.child_uri("victims"))
    for spec, todo, work in _walk(suite, options, plan.done, store):
        plan.planned += 1
        if todo is None:
            plan.skipped += 1
            continue
        plan.for_defenses += not todo.write_undefended
        plan.from_saved += work == WORK_ADD_SAVED
        plan.resumed += work == WORK_RESUME
        plan.pending.append(pending_trial(todo, work or WORK_NEW))  # work is set with todo
        pending[spec.scenario.name] = spec.scenario
        if ATTACKS.get(spec.attack.name).needs_models:
            needing_models[spec.scenario.name] = spec.scenario
    plan.scenarios_needing_models = list(needing_models.values())
    plan.scenarios_pending = list(pending.values())
    return plan


def _expected_seconds(suite: SuiteConfig, options: RunOptions, plan: _Plan) -> float | None:
    """Logs the time left (:mod:`raypoison.analysis.time_left`) and returns the wall seconds
    it expects with the run's workers, None where some pending phase has no measure."""
    if not plan.pending:
        return None
    workers = options.workers or suite.execution.workers
    try:  # a log line: reading the rows again must never stop the run
        left = estimate_time_left(suite, options, plan.pending)
    except Exception as err:
        log.warning("no estimate of the time left (%s)", err)
        return None
    log.info("%s", left.text(workers))
    return left.wall(workers) if left.estimated == left.trials else None


def estimate_time_left(suite: SuiteConfig, options: RunOptions,
                       pending: list[PendingTrial]) -> TimeLeft:
    """The time ``pending`` will take, from the output's own rows, preferring those measured at
    this run's CPUs a worker (:mod:`raypoison.analysis.time_left`)."""
    rows = with_cpus_per_worker(results.load(options.output, COLUMNS),
                                run_status.manifests(options.output))
    return time_left(rows, pending, _cpus_per_worker(suite, options))


def _warn_weight_conflicts(uri: str, run_id: str) -> None:
    """Say, before any trial, when a cached model is not the one earlier runs used (e.g. a new
    machine pre-trained it again): the rows would mix two sets of weights."""
    for file, by_digest in run_status.weight_conflicts(run_status.manifests(uri)).items():
        if any(run_id in runs for runs in by_digest.values()):
            log.warning("%s", run_status.conflict_text(file, by_digest))


def _keep_saved_work(scheduler: Scheduler, sink: ParquetSink) -> int:
    """After a stop, the rows of what the cut-short trials finished and saved beside their
    victims (:func:`raypoison.trial.run.saved_rows`): the undefended rows and each finished
    defense's, added to the sink before its last flush. Returns how many. Best effort: a trial
    whose saved files cannot be read is left to the next run, which finds them itself, and
    nothing here may keep the rows already received from being written."""
    kept = 0
    where = {"worker": f"{socket.gethostname()}:{os.getpid()} (driver, after the stop)",
             "ray_version": ray.__version__}
    try:
        for task, attempt in scheduler.unfinished():
            if not (task.save_victims and task.victims_uri):
                continue
            store = VictimStore(task.victims_uri)
            for spec in task.specs:
                try:
                    rows = stamp(saved_rows(spec, store), run_id=task.run_id, attempt=attempt,
                                 **where)
                except Exception as err:
                    log.warning("trial %s: its saved work could not be read (%s); the next run "
                                "finds it", spec.trial_id, err)
                    continue
                problem = check_rows(rows)
                if problem is not None:
                    log.warning("trial %s: its saved work does not fit the rows (%s); the next "
                                "run redoes it", spec.trial_id, problem)
                    continue
                sink.add(rows)
                kept += len(rows)
    except BaseException as err:  # a second Ctrl-C, say: the received rows still get flushed
        log.warning("stopped keeping the saved work of cut-short trials: %r", err)
    if kept:
        log.info("kept %d rows of the cut-short trials' finished work (the next run computes "
                 "only what is missing)", kept)
    return kept


def run_suite(suite: SuiteConfig, options: RunOptions, config_text: str | None = None
              ) -> RunSummary:
    """Run every pending trial of ``suite`` into ``options.output``, holding the output's lease
    (:mod:`raypoison.execution.lease`) from planning to the end."""
    start = time.monotonic()
    location = Location.parse(options.output)
    plan = _plan(suite, options, location)  # bad filters and checkpoints: refused, nothing written
    check_checkpoint_files(plan.scenarios_needing_models)
    run_id = new_run_id()
    with Lease(location, run_id, share=options.share, times=options.lease_times):
        plan = _plan(suite, options, location)  # again, under the lease: what is stored now
        check_checkpoint_files(plan.scenarios_needing_models)
        return _run_planned(suite, options, config_text, location, run_id, plan, start)


def _run_planned(suite: SuiteConfig, options: RunOptions, config_text: str | None,
                 location: Location, run_id: str, plan: _Plan, start: float) -> RunSummary:
    done, planned, skipped = plan.done, plan.planned, plan.skipped
    for_defenses, from_saved, resumed = plan.for_defenses, plan.from_saved, plan.resumed
    scenarios_needing_models = plan.scenarios_needing_models
    summary = RunSummary(run_id=run_id, status="running", planned=planned, skipped=skipped)
    manifest = _Manifest(location, run_id, {
        "run_id": run_id, "suite": suite.name, "status": "running",
        "started_at": datetime.now(UTC).isoformat(), "finished_at": None,
        "config_path": options.config_path, "config": to_plain(suite), "config_text": config_text,
        "filters": {"attacks": options.attacks, "scenarios": options.scenarios,
                    "defenses": options.defenses,
                    "trials": None if options.trials is None else
                    [options.trials.start, options.trials.stop],
                    "retry_failed": options.retry_failed, "share": options.share},
        "trials": {"planned": planned, "skipped_already_done": skipped,
                   "for_added_defenses": for_defenses,
                   "resumed_from_saved_victims": resumed,
                   "to_craft_and_train": planned - skipped - from_saved - resumed},
        "versions": _versions(), "git_revision": _git_revision(),
        "host": socket.gethostname(), "pid": os.getpid(), "argv": sys.argv,
    })
    manifest.write()
    summary.manifest = manifest.path
    log.info("run %s: %d trials planned, %d already in %s, %d to compute", run_id, planned,
             skipped, options.output, planned - skipped)
    if for_defenses:
        log.info("%d of them have their rows but lack some of the suite's defenses; %d run them "
                 "on saved victims (no crafting, no training) and %d craft and train again to "
                 "run them (their victims were not saved: execution.save_victims); only the new "
                 "defense rows are written", for_defenses, from_saved, for_defenses - from_saved)
    if resumed:
        log.info("%d of them stopped after their victims trained: they resume at their "
                 "defenses on the saved victims", resumed)
    expected = _expected_seconds(suite, options, plan)

    sink = ParquetSink(location, run_id, rows_per_file=suite.execution.rows_per_file,
                       flush_seconds=suite.execution.flush_seconds)
    failure: str | None = None  # why the run failed, for the manifest
    errors: Counter[str] = Counter()  # this run's failed and rejected rows, by error
    flush_error: Exception | None = None
    progress: Progress | None = None
    scheduler: Scheduler | None = None
    try:
        if planned == skipped:
            summary.status = "completed"
            return summary
        with ray_session(options.address, num_cpus=options.num_cpus, num_gpus=options.num_gpus,
                         dashboard=options.dashboard) as session:
            workers, cpus, gpus = _worker_plan(suite, options, session)
            manifest.write(ray={"mode": session.mode, "address": session.address,
                                "resources": session.resources, "workers": workers,
                                "cpus_per_worker": cpus, "gpus_per_worker": gpus})
            task_cpus = suite.execution.pretrain_cpus or cpus or 1
            # decoded before any worker holds the CPUs the decode tasks need
            datasets = SharedDatasets(num_cpus=task_cpus) if suite.execution.share_data else None
            data_refs = {s.name: datasets.ref(s.dataset) for s in plan.scenarios_pending
                         } if datasets is not None else {}
            if datasets is not None:
                datasets.decodes()  # a data set that cannot be read stops the run here
            prepared = prepare_checkpoints(scenarios_needing_models, location,
                                           num_cpus=task_cpus, num_gpus=gpus, datasets=datasets)
            checkpoints = prepared.refs
            manifest.write(models=[dataclasses.asdict(w) for w in prepared.weights])
            if prepared.weights:  # no model, nothing to compare: skip reading the manifests
                _warn_weight_conflicts(options.output, run_id)
            if datasets is not None:  # with those that only pre-training reads
                decodes = datasets.decodes()
                manifest.write(data={"shared": True, "decodes": decodes})
                log.info("decoded %d data set(s) once for the run: %s", len(decodes),
                         ", ".join(f"{d['dataset']} in {d['seconds']:.1f} s" for d in decodes))

            # absolute, so workers find it whatever their working folder
            poisons_uri = location.child_uri("poisons") if options.save_poisons else None
            victims_uri = location.child_uri("victims")
            progress = Progress(planned - skipped, interval=suite.execution.progress_seconds,
                                stream=options.progress_stream, expected=expected)

            def tasks() -> Iterator[TrialTask]:
                for specs in batches(_pending(suite, options, done), suite.execution.craft_batch):
                    name = specs[0].scenario.name
                    yield TrialTask(specs, run_id, checkpoints.get(name, {}),
                                    poisons_uri, victims_uri, suite.execution.save_victims,
                                    suite.execution.batch_heads, data_refs.get(name))

            def on_rows(rows: list[dict]) -> None:
                sink.add(rows)
                errors.update(_error_key(r) for r in rows
                              if r.get("status") in (STATUS_FAILED, STATUS_REJECTED))

            def on_tick(stats, in_flight: int) -> None:
                sink.flush_due()
                progress.update(done=stats.trials_done, failed=stats.trials_failed,
                                in_flight=in_flight)

            scheduler = Scheduler(
                lambda: start_worker(num_cpus=cpus, num_gpus=gpus,
                                     max_restarts=suite.execution.max_restarts,
                                     cpu_threads=max(1, math.floor(cpus))),
                workers=workers, max_in_flight=suite.execution.in_flight_limit(workers),
                max_attempts=suite.execution.max_attempts, on_rows=on_rows, on_tick=on_tick,
                tick_seconds=min(1.0, suite.execution.flush_seconds),
            )
            try:
                scheduler.run(tasks())
                _record_worker_pings(manifest, scheduler.live_handles)
            finally:
                for handle in scheduler.handles:  # free their resources for the autoscaler
                    with suppress(Exception):
                        ray.kill(handle, no_restart=True)
            summary.status = "completed"
    except KeyboardInterrupt:
        summary.status = "interrupted"
        raise
    except BaseException as err:
        summary.status = "failed"
        failure = f"{type(err).__name__}: {str(err)[:500]}"
        raise
    finally:
        if scheduler is not None and summary.status != "completed":
            summary.salvaged = _keep_saved_work(scheduler, sink)
        try:
            sink.flush()
        except Exception as err:  # e.g. the disk is full: say so, and what was not written
            summary.status = "failed"
            failure = failure or f"{type(err).__name__}: {str(err)[:500]}"
            log.error("run %s: %s", run_id, failure)
            flush_error = err
        if progress is not None:
            progress.close()
        if scheduler is not None:
            summary.computed = scheduler.stats.trials_done
            summary.failed = scheduler.stats.trials_failed
            summary.scheduler = dataclasses.asdict(scheduler.stats)
        threads = {}
        if (scheduler is not None and scheduler.answers
                and "worker_threads" not in manifest.content.get("ray", {})):
            # a stopped run never asked again; its workers said so when they came up
            threads = {"ray": {**manifest.content.get("ray", {}),
                               **_worker_records(scheduler.answers)}}
        summary.errors = [(n, e) for e, n in errors.most_common()]
        summary.rows_written, summary.files_written = sink.rows_written, sink.files_written
        summary.seconds = time.monotonic() - start
        try:  # the disk that refused the rows may refuse the manifest too
            manifest.write(
                status=summary.status, finished_at=datetime.now(UTC).isoformat(),
                trials={"planned": planned, "skipped_already_done": skipped,
                        "for_added_defenses": for_defenses,
                        "resumed_from_saved_victims": resumed,
                        "to_craft_and_train": planned - skipped - from_saved - resumed,
                        "computed": summary.computed, "with_failures": summary.failed},
                failed_rows=[{"rows": n, "error": e} for n, e in summary.errors[:20]],
                output={"rows_written": summary.rows_written, "files_written": summary.files_written,
                        "rows_from_saved_work_after_the_stop": summary.salvaged},
                scheduler=summary.scheduler, seconds=summary.seconds, **threads,
                error=failure, rows_not_written=sink.rows_lost,
            )
        except OSError as err:
            log.error("run %s: could not update its manifest %s (%s)", run_id, manifest.path, err)
        if flush_error is not None and sys.exc_info()[0] is None:
            raise flush_error
    return summary
