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
  A SIGTERM that lands while ``ray.init`` runs (seconds, on a loaded machine) meets Ray's handler,
  which exits; that exit is turned back into the same stop.
- If Ray is already initialized (a notebook, a test), use it and leave it running.
- An address nothing answers at is refused within seconds, naming it (:func:`check_address`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import ray

from raypoison.errors import ConfigError

log = logging.getLogger("raypoison")


@dataclass(frozen=True)
class RaySession:
    mode: str  # "embedded", "cluster" or "existing"
    address: str | None
    resources: dict[str, float]


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def check_address(address: str, source: str = "--address", seconds: float = 10.0) -> None:
    """Refuse, at once and naming it, a cluster address nothing answers at: ``ray.init`` would
    retry for minutes printing only its own low-level messages. ``http://`` is the dashboard's
    job-submission address (``ray job submit``), not one a driver joins; ``auto``, ``local`` and
    client addresses (``ray://``) are left to Ray."""
    address = address.strip()
    if address in ("auto", "local") or ("://" in address
                                        and not address.startswith(("http://", "https://"))):
        return  # Ray's own forms: found by Ray, or a client (ray://) connection
    if address.startswith(("http://", "https://")):
        raise ConfigError(source, f"{address} is the dashboard's address, for `ray job submit`; "
                                  "a driver joins the cluster at its head's GCS address "
                                  "(host:6379), or unset it to start a local Ray instance")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(source, f"{address!r} is not host:port (the head's GCS address, "
                                  "e.g. 10.0.0.5:6379)")
    host = host.removeprefix("[").removesuffix("]")  # an IPv6 address: [::1]:6379
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as err:
        raise ConfigError(source, f"nothing answers at {address} ({err.strerror or err}); is "
                                  "the cluster's head running, and is this its GCS port "
                                  "(6379 by default)?") from None


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                num_gpus: float | None = None, dashboard: bool = False) -> Iterator[RaySession]:
    if address:
        check_address(address)
    if ray.is_initialized():
        yield RaySession("existing", None, dict(ray.cluster_resources()))
        return
    if not address and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        check_address(address, "RAY_ADDRESS (environment)")
    ours = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    mode = "cluster" if address else "embedded"
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,  # type: ignore[arg-type]
                     include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=True)
    except SystemExit as err:
        if ours is None:
            raise
        # Ray's handlers, in place while it starts, answer SIGTERM with sys.exit (the node's
        # after killing what it started): a stop, as ours would have made it, not a failure
        with suppress(Exception):
            ray.shutdown()
        raise KeyboardInterrupt(f"SIGTERM while Ray was starting (exit {err.code})") from None
    finally:
        if ours is not None:  # ray.init replaced it with one that exits without our cleanup
            signal.signal(signal.SIGTERM, ours)
    try:
        session = RaySession(mode, address, dict(ray.cluster_resources()))
        log.info("ray: %s instance, resources %s", mode,
                 {k: v for k, v in session.resources.items() if k in ("CPU", "GPU")})
        yield session
    finally:
        ray.shutdown()
