"""TrialWorker: a long-lived actor that loads a scenario's data and models once and runs trials.

Workers ask Ray for a fraction of a GPU; Ray does not split GPU memory, so each worker caps its own
share, less its CUDA context (:func:`raypoison.core.gpu_memory.memory_share`), with
``torch.cuda.set_per_process_memory_fraction``. An error inside a trial comes back as
failure rows; only the death of the worker process itself reaches the scheduler as an error.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import ray

from raypoison.config.specs import TrialSpec
from raypoison.core.gpu_memory import bank_limit, memory_share
from raypoison.execution.devices import assigned_device, describe_device
from raypoison.store.rows import check_rows, describe_error, failure_rows, stamp


@dataclass(frozen=True)
class TrialTask:
    """Trials of one scenario and attack for one call: their poisons are crafted in one batch."""

    specs: tuple[TrialSpec, ...]
    run_id: str
    checkpoints: Mapping[str, Any]  # model name -> ObjectRef of checkpoint bytes
    poisons_uri: str | None = None  # export poisons under here, one trial folder per trial
    victims_uri: str | None = None  # saved victims live here (raypoison.trial.victims)
    save_victims: bool = False  # keep every trained victim there
    batch_heads: bool = False  # train the trials' transfer heads together (execution.batch_heads)
    data: Any = None  # ObjectRef of the scenario's data set as arrays (execution.datasets); None:
    # the worker decodes it itself


def poisons_folder(uri: str, spec: TrialSpec) -> str:
    """``<uri>/scenario=…/attack=…/<trial index>``: the folder an ``external`` attack reads."""
    from raypoison.store.storage import Location

    return Location.parse(uri).child_uri(f"scenario={spec.scenario.name}",
                                         f"attack={spec.attack.label}", str(spec.index))


def _exporter(uri: str):
    from raypoison.formats.trial_folder import TrialFolder, patch_position, trial_folder_files
    from raypoison.store.storage import Location

    def save(spec, setup, poisons, data, trigger=None) -> None:
        folder = Location.parse(poisons_folder(uri, spec))
        patch = (patch_position(trigger, *data.image_shape[1:]) if trigger is not None
                 else None)
        trial = TrialFolder(poisons.images.cpu(), tuple(poisons.labels),
                            tuple(poisons.base_indices), data.test_x[setup.target_index].cpu(),
                            setup.target_class, *(patch or (None, None)))
        for name, blob in trial_folder_files(trial).items():
            folder.write_bytes(folder.join(name), blob)

    return save


def checked_rows(specs: tuple[TrialSpec, ...], per_trial: list[list[dict]], **where: Any
                 ) -> list[dict]:
    """Each trial's rows stamped with ``where`` (run, worker, node, attempt) and checked against
    the schema here, in the worker: a trial whose rows the schema cannot hold is replaced by its
    failure rows, saying which field, so the driver never receives a row it cannot write."""
    out = []
    for spec, rows in zip(specs, per_trial, strict=True):
        rows = stamp(rows, **where)
        problem = check_rows(rows)
        if problem is not None:
            rows = stamp(failure_rows(spec, f"rows: {problem}"), **where)
        out.extend(rows)
    return out


class TrialWorker:
    def __init__(self, gpu_fraction: float = 0.0, cpu_threads: int = 1, max_contexts: int = 1):
        import torch

        torch.set_num_threads(max(1, cpu_threads))
        self.device = assigned_device()
        self.memory_cap: float | None = None  # of the GPU's memory, where shared
        total = torch.cuda.get_device_properties(0).total_memory if self.device == "cuda" else None
        if total is not None and 0 < gpu_fraction < 1:
            self.memory_cap = memory_share(gpu_fraction, total)
            torch.cuda.set_per_process_memory_fraction(self.memory_cap)
        self.bank_bytes = bank_limit(self.device, self.memory_cap, total)
        self.max_contexts = max_contexts
        self._contexts: dict[str, Any] = {}
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.node = ray.get_runtime_context().get_node_id()[:12]
        self.trials_run = 0
        self.decodes = 0  # data sets this worker decoded itself (not from the object store)

    def ping(self) -> dict[str, Any]:
        import torch

        return {"worker": self.identity, "node": self.node, **describe_device(self.device),
                "memory_cap": self.memory_cap, "bank_bytes": self.bank_bytes,
                "threads": torch.get_num_threads(),
                "pid": os.getpid(), "trials_run": self.trials_run, "decodes": self.decodes}

    def _context(self, task: TrialTask):
        from raypoison.data import ImageData, load_dataset
        from raypoison.trial.context import TrialContext

        scenario = task.specs[0].scenario
        key = scenario.name
        if key not in self._contexts:
            while len(self._contexts) >= self.max_contexts:
                self._contexts.pop(next(iter(self._contexts)))  # drop the oldest scenario
            names = list(task.checkpoints)
            blobs = ray.get([task.checkpoints[n] for n in names]) if names else []
            if task.data is not None:  # the node's shared copy, mapped without a copy
                data = ImageData.from_arrays(ray.get(task.data))
            else:
                data = load_dataset(scenario.dataset)
                self.decodes += 1
            self._contexts[key] = TrialContext(
                scenario, data, dict(zip(names, blobs, strict=True)), self.device,
                self.bank_bytes)
        return self._contexts[key]

    def run(self, task: TrialTask, attempt: int = 1) -> list[dict]:
        """The rows of every trial of the task."""
        from raypoison.trial.run import run_trials

        try:
            from raypoison.trial.victims import VictimStore

            exporter = _exporter(task.poisons_uri) if task.poisons_uri else None
            victims = VictimStore(task.victims_uri) if task.victims_uri else None
            per_trial = run_trials(list(task.specs), self._context(task), exporter, victims,
                                   task.save_victims, task.batch_heads)
        except Exception as err:  # loading the scenario failed: every trial of it says why
            per_trial = [failure_rows(spec, describe_error(err, "load")) for spec in task.specs]
        self.trials_run += len(task.specs)
        return checked_rows(task.specs, per_trial, run_id=task.run_id, worker=self.identity,
                            node=self.node, attempt=attempt, ray_version=ray.__version__)


def start_worker(*, num_cpus: float, num_gpus: float, max_restarts: int,
                 cpu_threads: int) -> ray.actor.ActorHandle:
    remote = ray.remote(TrialWorker).options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=0,
    )
    return cast(ray.actor.ActorHandle, remote.remote(gpu_fraction=num_gpus,
                                                     cpu_threads=cpu_threads))
