"""Results in object storage: local S3- and GCS-compatible servers started by the tests (moto's
server, gcp-storage-emulator), written through pyarrow's S3 and GCS file systems like any bucket."""

import socket
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pytest

from raypoison import results
from raypoison.compact import compact
from raypoison.config import parse_suite
from raypoison.execution.runner import RunOptions, run_suite
from raypoison.storage import Location
from tests.conftest import free_port, noop_raw


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


def _run_resume_compact(uri: str, trials: int, rows_per_file: int, filesystem: type):
    """A run of trivial trials into ``uri``, a resume that computes nothing, and a compaction;
    checks what every store must show and returns (first run, compaction)."""
    raw = noop_raw(trials=trials, seconds=0.0, victims=2)
    raw["execution"] = {"workers": 2, "cpus_per_worker": 0, "gpus_per_worker": 0,
                        "rows_per_file": rows_per_file, "flush_seconds": 0.2}
    suite = parse_suite(raw)
    first = run_suite(suite, RunOptions(output=uri))
    assert first.computed == trials
    location = Location.parse(uri)
    assert isinstance(location.fs, filesystem)  # the object-store path, not a folder
    names = [info.path for info in location.list_files(location.root)]
    assert any("/manifests/run-" in n for n in names)
    assert not [n for n in names if n.endswith(".tmp") or "/." in n]  # nothing partial, ever
    df = results.load(uri)
    assert len(df) == 2 * trials and not df.duplicated(["trial_id", "victim"]).any()
    # the results/ folder itself reads the same, the URI's options kept
    assert len(results.load(location.child_uri("results"))) == 2 * trials
    again = run_suite(suite, RunOptions(output=uri))
    assert (again.skipped, again.computed) == (trials, 0)
    done = compact(uri)
    assert done.rows_after == 2 * trials and len(results.load(uri)) == 2 * trials
    return first, done


def test_a_run_writes_resumes_and_compacts_in_gcs(ray_cluster, gcs_uri):
    first, _ = _run_resume_compact(gcs_uri, 12, 8, pafs.GcsFileSystem)
    assert first.files_written >= 3


def test_a_run_writes_resumes_and_compacts_in_s3(ray_cluster, s3_uri):
    first, done = _run_resume_compact(s3_uri, 30, 10, pafs.S3FileSystem)
    assert first.files_written >= 6 and done.files_after == 1
