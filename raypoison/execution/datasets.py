"""Each data set a run needs, decoded once and shared through Ray's object store.

Decoding is the slow part of loading (60,000 JPEGs for the CIFAR-10 copy); before this, every
worker decoded the whole data set itself and pre-training decoded it again. Now one Ray task per
data set decodes it into numpy arrays; workers and pre-training tasks receive an object reference.
Ray copies an object to a node once, and every process on that node maps the same read-only
memory (``ImageData.from_arrays`` wraps it without a copy), so a node holds one decoded copy
however many workers it runs. The manifest records each decode (``data.decodes``) and how many
data sets the workers still decoded themselves (``data.worker_decodes``: 0 when sharing works).

``execution.share_data: false`` restores the old behaviour (every worker decodes), which
``benchmarks/decode_once.py`` uses to measure the difference.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import ray

from raypoison.core.identity import digest, identity_of
from raypoison.core.registry import Component
from raypoison.errors import RaypoisonError


@contextmanager
def project_errors() -> Iterator[None]:
    """A project error raised inside a Ray task (a ``DataError`` naming a missing file) comes out
    as itself, not wrapped in Ray's traceback, so the CLI prints its message."""
    try:
        yield
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, RaypoisonError):
            raise err.cause from None
        raise


def dataset_key(component: Component) -> str:
    """What tells two data sets apart: the source and its parameters' identity (file contents
    where the parameters name files)."""
    return digest({"name": component.name, "params": identity_of(component.params)})


def decode_task(component: Component) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(what the manifest records, the data set as arrays)``: two objects, so the driver reads
    the first without pulling the arrays."""
    from raypoison.data import load_dataset

    start = time.monotonic()
    data = load_dataset(component)
    record = {"dataset": component.name, "key": dataset_key(component),
              "seconds": round(time.monotonic() - start, 2), "bytes": data.nbytes,
              "train": len(data.train_y), "test": len(data.test_y),
              "host": socket.gethostname(), "pid": os.getpid()}
    return record, data.to_arrays()


class SharedDatasets:
    """The object references of a run's decoded data sets, one decode per distinct data set."""

    def __init__(self, *, num_cpus: float):
        self._task = ray.remote(decode_task).options(num_cpus=num_cpus, num_returns=2,
                                                     max_retries=2)
        self._refs: dict[str, ray.ObjectRef] = {}
        self._records: list[ray.ObjectRef] = []

    def ref(self, component: Component) -> ray.ObjectRef:
        """The reference to ``component`` decoded; the first call for a data set submits its
        decode."""
        key = dataset_key(component)
        if key not in self._refs:
            record, arrays = cast(tuple[ray.ObjectRef, ray.ObjectRef], self._task.remote(component))
            self._refs[key] = arrays
            self._records.append(record)
        return self._refs[key]

    def decodes(self) -> list[dict[str, Any]]:
        """What each decode recorded (waits for those still running); a data set that cannot be
        decoded raises its ``DataError`` here, before any trial runs."""
        with project_errors():
            return list(ray.get(self._records))
