"""One decode per run: data sets are decoded once, by a Ray task, and every worker maps that copy
from the object store (raypoison.execution.datasets)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raypoison.config.specs import expand
from raypoison.config.suite import parse_suite
from raypoison.data import ImageData, load_dataset
from raypoison.errors import DataError
from raypoison.execution.runner import RunOptions, run_suite
from raypoison.store.results import read_table
from raypoison.trial.context import TrialContext
from raypoison.trial.run import run_trials
from tests.conftest import noop_raw


def _manifest(output: Path) -> dict:
    (path,) = (output / "manifests").glob("run-*.json")
    return json.loads(path.read_text())


def _run(raw: dict, output: Path, **options) -> dict:
    run_suite(parse_suite(raw), RunOptions(output=str(output), num_cpus=2,
                                           progress_stream=io.StringIO(), **options))
    return _manifest(output)


def test_workers_share_one_decode_of_the_data_set(ray_cluster, tmp_path):
    raw = noop_raw(trials=12, seconds=0.05)
    raw["execution"]["workers"] = 2
    manifest = _run(raw, tmp_path / "shared")
    data = manifest["data"]
    assert data["shared"] is True
    assert len(data["decodes"]) == 1  # one scenario, one data set
    assert data["decodes"][0]["dataset"] == "synthetic" and data["decodes"][0]["bytes"] > 0
    assert data["workers_asked"] == 2 and data["worker_decodes"] == 0
    assert read_table(str(tmp_path / "shared"), ["trial_id"]).num_rows == 12

    raw["execution"]["share_data"] = False  # the old way: each worker decodes for itself
    manifest = _run(raw, tmp_path / "apart")
    assert "decodes" not in manifest["data"]
    assert manifest["data"]["worker_decodes"] >= 1


def test_cpus_per_worker_from_the_command_line_sets_each_workers_threads(ray_cluster, tmp_path):
    """``--cpus-per-worker`` overrides the config: one worker on two cores computes with two
    PyTorch threads, and the manifest says so (the config's one CPU gives one thread)."""
    raw = noop_raw(trials=2, seconds=0.01)
    raw["execution"]["workers"] = 1
    default = _run(raw, tmp_path / "config")["ray"]
    assert (default["cpus_per_worker"], default["worker_threads"]) == (1, [1])
    wide = _run(raw, tmp_path / "wide", cpus_per_worker=2)["ray"]
    assert (wide["workers"], wide["cpus_per_worker"], wide["worker_threads"]) == (1, 2, [2])


def test_a_worker_computes_on_the_device_ray_gave_it_and_the_manifest_says_which(ray_cluster,
                                                                                 tmp_path):
    """A worker asks Ray, not PyTorch, which device is its own: one that holds a share of a GPU
    that PyTorch cannot use (the tests' logical GPUs) computes on the CPU, and the manifest names
    the GPU it held unused; one that holds none says plain ``cpu`` (on a GPU node it no longer
    trains on GPU 0 outside every memory share)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the tests' logical GPU 0 is a real one here")
    raw = noop_raw(trials=2, seconds=0.01)
    raw["execution"].update(workers=2, gpus_per_worker=0)
    assert _run(raw, tmp_path / "none")["ray"]["worker_devices"] == ["cpu", "cpu"]
    raw["execution"].update(gpus_per_worker=0.5)
    shared = _run(raw, tmp_path / "share")["ray"]
    assert shared["gpus_per_worker"] == 0.5 and len(shared["worker_devices"]) == 2
    for label in shared["worker_devices"]:
        assert re.fullmatch(r"cpu \(Ray's GPU \d unused: no CUDA\)", label), label
    rows = read_table(str(tmp_path / "share"), ["device"]).to_pydict()["device"]
    assert rows and set(rows) == {"cpu"}


def test_shared_arrays_are_mapped_not_copied_and_trials_never_write_them(ray_cluster, tiny_raw,
                                                                         tiny_checkpoint):
    """Every worker of a node maps the same read-only memory, so a trial that wrote into the data
    set in place would corrupt its neighbours' trials: run every kind of trial on it and compare."""
    ray = ray_cluster
    tiny_raw["attacks"] = [{"name": "none"},
                           {"name": "feature_collision", "params": {"iterations": 5}},
                           {"name": "bullseye_polytope", "params": {"iterations": 5}},
                           {"name": "clean_label_backdoor", "params": {"steps": 2}},
                           {"name": "badnets", "params": {"poisons": 3}}]
    tiny_raw["defenses"] = [{"name": "spectral_signatures"}]
    tiny_raw["scenarios"][0]["trusted_per_class"] = 2
    suite = parse_suite(tiny_raw)
    scenario = suite.scenarios[0]
    arrays = ray.get(ray.put(load_dataset(scenario.dataset).to_arrays()))
    before = {k: hashlib.sha256(arrays[k].tobytes()).hexdigest()
              for k in ("train_x", "train_y", "test_x", "test_y")}
    data = ImageData.from_arrays(arrays)
    ctx = TrialContext(scenario, data, {"net-a": tiny_checkpoint})
    assert ctx.data.train_x.data_ptr() == arrays["train_x"].ctypes.data  # no copy on the CPU
    specs = [s for s in expand(suite) if s.index < 2]
    assert {s.attack.name for s in specs} == {a["name"] for a in tiny_raw["attacks"]}
    rows = [row for attack in {s.attack.name for s in specs}
            for per_trial in run_trials([s for s in specs if s.attack.name == attack], ctx)
            for row in per_trial]
    assert rows and all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    after = {k: hashlib.sha256(arrays[k].tobytes()).hexdigest() for k in before}
    assert after == before


def test_a_data_set_that_cannot_be_decoded_stops_the_run_with_its_error(ray_cluster, tmp_path,
                                                                        tiny_raw):
    root = tmp_path / "images"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                image = Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8))
                image.save(root / split / cls / f"{i}.png")
    bad = root / "train" / "b" / "2.png"
    bad.write_bytes(b"not an image")
    scenario = tiny_raw["scenarios"][0]
    scenario["dataset"] = {"name": "imagefolder", "params": {"root": str(root)}}
    scenario.update(budget=1, train_per_class=2)
    tiny_raw["attacks"] = [{"name": "noop"}]
    with pytest.raises(DataError, match="2.png"):
        _run(tiny_raw, tmp_path / "out")
    manifest = _manifest(tmp_path / "out")
    assert manifest["status"] == "failed" and "2.png" in manifest["error"]


@pytest.mark.parametrize("total_gb", [24, 80, 141])
@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_packed_workers_memory_caps_leave_room_for_their_cuda_contexts(total_gb, workers):
    """k workers at 1/k each used to cap PyTorch at the whole card between them, with each
    process's CUDA context on top: now their caps and contexts fit on the card together."""
    from raypoison.core.gpu_memory import CONTEXT_BYTES, memory_share

    total = total_gb * 2**30
    share = memory_share(1 / workers, total)
    assert workers * (share * total + CONTEXT_BYTES) <= total
    assert share * total == pytest.approx(total / workers - CONTEXT_BYTES)  # the context, no more


@pytest.mark.parametrize("total_gb", [16, 80, 141])
@pytest.mark.parametrize("workers", [1, 4, 8])
def test_a_feature_bank_takes_at_most_half_of_its_workers_share(total_gb, workers):
    """The bank was bounded at a fixed 4 GiB whatever the card and the packing: four workers of
    a 16 GB card could each ask for 4 GiB. Now a bank takes half of its worker's cap at most."""
    from raypoison.core.gpu_memory import CPU_BANK_BYTES, bank_limit, memory_share

    total = total_gb * 2**30
    cap = memory_share(1 / workers, total) if workers > 1 else None
    limit = bank_limit("cuda", cap, total)
    assert limit == pytest.approx((cap or 1.0) * total / 2, abs=1)
    assert workers * limit <= total / 2
    # the paper-scale transfer scenario's banks (162 views of 2,750 images under ResNet-18,
    # VGG-11 and MobileNetV2: 512 + 512 + 1,280 features, float32; 3.82 GiB together) fit a
    # quarter of an 80 GB card, not a quarter of a 16 GB one, where the victims run the extractor
    paper = 162 * 2750 * (512 + 512 + 1280) * 4
    assert (paper <= limit) == (total / workers >= 8 * 2**30)
    assert bank_limit("cpu", None, None) == CPU_BANK_BYTES


def test_the_bank_limit_counts_every_victims_bank(tiny_raw, tiny_checkpoint):
    """A trial trains all its victims and each keeps its bank: the limit held one bank (the
    widest victim's), so a scenario of three victims could take three times what it allowed."""
    from raypoison.config.suite import parse_suite
    from raypoison.trial.context import VIEWS, TrialContext

    scenario = tiny_raw["scenarios"][0]
    scenario["models"]["net-b"] = dict(scenario["models"]["net-a"])
    scenario["victims"] = ["net-a", "net-b"]
    parsed = parse_suite(tiny_raw).scenarios[0]
    checkpoints = {"net-a": tiny_checkpoint, "net-b": tiny_checkpoint}
    probe = TrialContext.create(parsed, checkpoints)
    pool = (parsed.train_per_class + parsed.budget) * probe.data.num_classes
    one_bank = VIEWS * pool * probe.model("net-a").feature_dim * 4
    assert not TrialContext.create(parsed, checkpoints, bank_bytes=one_bank).uses_feature_bank
    assert TrialContext.create(parsed, checkpoints, bank_bytes=2 * one_bank).uses_feature_bank


def test_the_manifest_names_each_workers_gpu_and_its_memory_cap():
    """What a GPU worker's ping says becomes the manifest's record (no GPU here: the answers are
    those a worker on one would give)."""
    from raypoison.execution.runner import _worker_records

    answers = [{"device": "cuda", "gpu_ids": ["0"], "gpu_name": "NVIDIA H200",
                "memory_cap": 0.2465, "threads": 1},
               {"device": "cpu", "gpu_ids": ["1"], "threads": 2},
               {"device": "cpu", "gpu_ids": [], "threads": 1}]
    assert _worker_records(answers) == {
        "worker_threads": [1, 1, 2],
        "worker_devices": ["cpu", "cpu (Ray's GPU 1 unused: no CUDA)",
                           "cuda (NVIDIA H200, memory capped at 24.6%)"]}
