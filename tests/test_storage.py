"""Results in object storage: local S3- and GCS-compatible servers started by the tests (moto's
server, gcp-storage-emulator, fixtures in conftest.py), written through pyarrow's S3 and GCS file
systems like any bucket."""

import pyarrow.fs as pafs
import pytest

from raypoison.config.suite import parse_suite
from raypoison.execution.runner import RunOptions, run_suite
from raypoison.store import results
from raypoison.store.compact import compact
from raypoison.store.storage import Location
from tests.conftest import noop_raw


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


@pytest.mark.slow
def test_a_run_writes_resumes_and_compacts_in_gcs(ray_cluster, gcs_uri):
    first, _ = _run_resume_compact(gcs_uri, 12, 8, pafs.GcsFileSystem)
    assert first.files_written >= 3


@pytest.mark.slow
def test_a_run_writes_resumes_and_compacts_in_s3(ray_cluster, s3_uri):
    first, done = _run_resume_compact(s3_uri, 30, 10, pafs.S3FileSystem)
    assert first.files_written >= 6 and done.files_after == 1
