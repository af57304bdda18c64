"""Shared fixtures: tiny configs on synthetic data, and one real local Ray instance per session."""

from __future__ import annotations

import copy
import inspect
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token files from test clusters

PRETRAIN = {"seed": 1, "recipe": {"lr": 0.05, "epochs": 8, "milestones": [6], "batch_size": 32}}

TINY = {
    "name": "tiny",
    "scenarios": [
        {
            "name": "tiny-transfer",
            "dataset": {"name": "synthetic", "params": {
                "classes": 4, "image_size": 12, "train_per_class": 40, "test_per_class": 10,
                "noise": 0.2, "seed": 3}},
            "models": {"net-a": {"arch": "convnet", "pretrain": PRETRAIN}},
            "attacker": "net-a",
            "victims": ["net-a"],
            "budget": 3,
            "epsilon": "16/255",
            "train_per_class": 12,
            "trials": 4,
            "recipe": {"lr": 0.01, "epochs": 3, "milestones": [2], "batch_size": 16},
        }
    ],
    "attacks": [{"name": "none"}, {"name": "feature_collision",
                                   "params": {"iterations": 10, "step": 0.01}}],
    "execution": {"workers": 2, "flush_seconds": 0.5, "progress_seconds": 60},
}


@pytest.fixture
def tiny_raw() -> dict:
    return copy.deepcopy(TINY)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def noop_raw(trials: int, seconds: float, victims: int = 1) -> dict:
    """A config of trivial trials: exercises the runner, trains nothing."""
    raw = copy.deepcopy(TINY)
    scenario = raw["scenarios"][0]
    scenario["trials"] = trials
    scenario["models"] = {f"net-{i}": {"arch": "convnet", "pretrain": PRETRAIN}
                          for i in range(victims)}
    scenario["attacker"] = "net-0"
    scenario["victims"] = list(scenario["models"])
    raw["attacks"] = [{"name": "noop", "params": {"seconds": seconds}}]
    return raw


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray instance: 2 CPUs and 4 logical GPUs (there is no GPU; actors asking for
    a fraction of one get CUDA_VISIBLE_DEVICES and run on the CPU)."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_checkpoint() -> bytes:
    from raypoison.config.suite import parse_suite
    from raypoison.trial.pretrain import pretrain_checkpoint

    suite = parse_suite(copy.deepcopy(TINY))
    scenario = suite.scenarios[0]
    return pretrain_checkpoint(scenario.models["net-a"], scenario.dataset)


def _serve(command: list[str], port: int) -> subprocess.Popen:
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError(f"the test server {command[0]} did not start") from None
            time.sleep(0.2)


@pytest.fixture
def s3_uri(monkeypatch):
    pytest.importorskip("moto")
    port = free_port()
    server = _serve([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    port)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    yield (f"s3://raypoison-test/run?endpoint_override=127.0.0.1:{port}&scheme=http"
           "&region=us-east-1&allow_bucket_creation=true")
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def gcs_uri():
    """A GCS emulator; ``anonymous@`` makes pyarrow send no credentials, and the query points
    its GCS client at the emulator over plain HTTP."""
    pytest.importorskip("gcp_storage_emulator")
    port = free_port()
    server = _serve([sys.executable, "-m", "gcp_storage_emulator", "start", "--host",
                     "127.0.0.1", "--port", str(port), "--in-memory",
                     "--default-bucket", "raypoison-test"], port)
    yield (f"gs://anonymous@raypoison-test/run?scheme=http&endpoint_override=127.0.0.1:{port}"
           "&retry_limit_seconds=10")
    server.terminate()
    server.wait(timeout=10)


def wait_for(condition, timeout: float = 120.0) -> None:
    """Poll ``condition`` every 0.1 s until it holds; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


# ``cluster``: the test starts or joins a real Ray instance. Found from the test's source, the
# module helpers it calls and the fixtures it uses, so a new test is marked without anyone
# remembering to (pyproject.toml declares the markers; ``slow`` is set by hand on the test).
_STARTS_RAY = ("ray_cluster", "run_suite(", 'main(["run"', 'main(["pretrain"', "pretrain_zoo(",
               '"raypoison.cli", "run"', "jobs/run.py", "jobs/pretrain.py", "ray.init(",
               "tests.autoscaling_run")


def _starts_ray(func, module, seen: set) -> bool:
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        return False
    if any(token in source for token in _STARTS_RAY):
        return True
    for name in re.findall(r"\b(_?[a-z]\w*)\(", source):
        helper = getattr(module, name, None)
        if inspect.isfunction(helper) and helper.__module__ == module.__name__ \
                and helper not in seen:
            seen.add(helper)
            if _starts_ray(helper, module, seen):
                return True
    return False


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        module = item.module
        funcs = [item.function]
        for defs in item._fixtureinfo.name2fixturedefs.values():
            funcs += [d.func for d in defs if getattr(d.func, "__module__", "") == module.__name__]
        if "ray_cluster" in item.fixturenames or any(
                _starts_ray(f, module, set()) for f in funcs):
            item.add_marker(pytest.mark.cluster)
