"""Connecting to Ray: the embedded local instance by default, or an existing cluster.

- ``address`` given, or ``RAY_ADDRESS`` set (as it is inside ``ray job submit``): join that cluster.
  Its token, if the cluster uses token authentication, comes from Ray's usual places
  (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``).
- Otherwise: start a new local instance with ``address="local"`` (never attach to a stale one
  named in ``/tmp/ray/ray_current_cluster``), dashboard off unless asked for and then bound to
  127.0.0.1, Ray's default authentication left as it is.
- ``ray.init`` installs SIGTERM handlers that exit at once (the driver's, and the embedded
  node's, which also kills its processes); the handler that was in place before is put back, so
  that ``raypoison run`` treats SIGTERM like Ctrl-C: it writes what has finished, marks the
  manifest ``interrupted`` and exits 130, and ``ray.shutdown`` then stops the embedded instance.
- If Ray is already initialized (a notebook, a test), use it and leave it running.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ray

log = logging.getLogger("raypoison")


@dataclass(frozen=True)
class RaySession:
    mode: str  # "embedded", "cluster" or "existing"
    address: str | None
    resources: dict[str, float]


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                num_gpus: float | None = None, dashboard: bool = False) -> Iterator[RaySession]:
    if ray.is_initialized():
        yield RaySession("existing", None, dict(ray.cluster_resources()))
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ours = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    if address:
        ray.init(address=address, log_to_driver=True)
        mode = "cluster"
    else:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,  # type: ignore[arg-type]
                 include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=True)
        mode = "embedded"
    if ours is not None:  # ray.init replaced it with one that exits without our cleanup
        signal.signal(signal.SIGTERM, ours)
    try:
        session = RaySession(mode, address, dict(ray.cluster_resources()))
        log.info("ray: %s instance, resources %s", mode,
                 {k: v for k, v in session.resources.items() if k in ("CPU", "GPU")})
        yield session
    finally:
        ray.shutdown()
