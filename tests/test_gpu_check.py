"""The prepared device check runs end to end in its CI-sized form (on the CPU here), so it is known
to work before a GPU is lent."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def without_ray(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import ray` fails, as it does on the lent GPU machine (PyTorch
    there, Ray not): the check must not reach the execution layer, or its first device minutes
    would be spent on an ImportError."""
    shim = tmp_path / "no-ray" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("no Ray on the device machine")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim.parent), env.get("PYTHONPATH")]))
    return env


@pytest.mark.slow
def test_gpu_check_tiny_measures_every_stage(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny",
                           "--out", str(out)], capture_output=True, text=True, timeout=900,
                          check=False, env=without_ray(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["tiny"] is True
    for precision in ("float32", "bf16"):
        assert report["epoch"][precision]["images_per_second"] > 0
    trials = report["trials"]
    for attack in ("none", "feature_collision", "convex_polytope", "bullseye_polytope",
                   "hidden_trigger_backdoor"):
        assert trials[attack]["status"] == "ok", trials[attack]
    assert trials["convex_polytope"]["seconds_craft_at_protocol_iterations"] > \
        trials["convex_polytope"]["seconds_craft"]
    for attack in ("feature_collision", "convex_polytope", "bullseye_polytope",
                   "hidden_trigger_backdoor"):  # scaled by the iterations computed
        entry = trials[attack]
        assert 0 < entry["iterations_ran"] <= entry["iterations_computed"]
        assert entry["iterations_computed"] <= entry["iterations_configured"]
        assert entry["seconds_per_iteration"] * entry["iterations_computed"] == pytest.approx(
            entry["seconds_craft"], rel=1e-2, abs=1e-3)  # the row's seconds, rounded to ms
    assert report["sharing"]["processes_2"]["images_per_second_total"] > 0
    brew = report["witches_brew"]
    assert brew["linf_255"] <= 8 and brew["seconds_craft_at_protocol"] > brew["seconds_craft"]
    # the measured device as `raypoison plan --calibration FILE --device NAME` reads it
    from raypoison.execution.device_rates import load_devices

    calibration = report["calibration"]
    measured = load_devices(calibration["file"])[calibration["device_name"]]
    assert measured.bf16 > 0 and measured.float32 > 0 and measured.seconds_per_step >= 0
    assert calibration["step_flops"] > calibration["head_step_flops"] > 0
    copies = report["host_copies"]  # on the CPU both ways are one path: the same weights
    assert copies["network"]["steps"] > 0 and copies["head"]["steps"] > 0
    assert copies["head"]["max_weight_difference"] == copies["network"]["max_weight_difference"] == 0
    backdoors = report["backdoors"]
    assert backdoors["failed"] == 0
    assert set(backdoors) >= {"badnets", "blend", "wanet", "clean_label_backdoor"}
    from raypoison.defenses import DEFENSES

    assert set(backdoors["badnets"]) == {"none", "peak_memory_mb", *DEFENSES.names()}


@pytest.mark.slow
def test_gpu_check_tiny_pilot_pairs_the_control_and_bullseye_polytope(tmp_path):
    out = tmp_path / "pilot.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny",
                           "--pilot", "--out", str(out)], capture_output=True, text=True,
                          timeout=900, check=False, env=without_ray(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    pilot = json.loads(out.read_text())["pilot"]
    assert pilot["pretrain"]["clean_accuracy"] > 0
    for attack in ("none", "bullseye_polytope"):
        assert pilot[attack]["trials"] == 3 and pilot[attack]["failed"] == 0
        low, high = pilot[attack]["wilson95_percent"]
        assert 0 <= low <= pilot[attack]["success_percent"] <= high <= 100
    assert pilot["paired"]["pairs"] == 3


@pytest.mark.parametrize("stages, said", [
    ("epoch,bogus", "unknown 'bogus'"), ("", "unknown nothing"),
    ("trials,epoch", "trials uses the model that epoch trains"),
])
def test_bad_stages_are_refused_before_any_device_time(tmp_path, stages, said):
    """A typo used to be recorded as a KeyError after the earlier stages had spent the lent
    device's minutes."""
    from benchmarks.gpu_check import main

    with pytest.raises(SystemExit, match=said):
        main(["--tiny", "--stages", stages, "--out", str(tmp_path / "g.json")])
    assert not (tmp_path / "g.json").exists()
    with pytest.raises(SystemExit, match="is a folder"):
        main(["--tiny", "--stages", "environment", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--pilot-chunk: at least 1 pair, got 0"):
        main(["--tiny", "--pilot", "--pilot-chunk", "0", "--out", str(tmp_path / "g.json")])


@pytest.mark.slow
def test_the_pilot_saves_its_figures_after_pre_training_and_every_chunk(tmp_path):
    """A device call stopped at its limit keeps what the pilot measured: the report is written
    after pre-training and after each finished pair, not only when the stage returns."""
    from benchmarks import gpu_check

    out = tmp_path / "pilot.json"
    seen: list[dict] = []
    write_json = gpu_check._write_json

    def recording(path, doc):
        if Path(path) == out:
            seen.append(json.loads(json.dumps(doc, default=str)))
        return write_json(path, doc)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gpu_check, "_write_json", recording)
        assert gpu_check.main(["--tiny", "--pilot", "--out", str(out)]) == 0
    pilots = [r["pilot"] for r in seen if "pilot" in r]
    partial = [p for p in pilots if p.get("partial")]
    assert partial[0]["pretrain"]["clean_accuracy"] > 0 and "paired" not in partial[0]
    # one pair first (to time one), then chunks of at most --pilot-chunk (tiny: 2)
    assert [p["paired"]["pairs"] for p in partial[1:]] == [1, 3]
    assert "partial" not in pilots[-1] and pilots[-1]["paired"]["pairs"] == 3
    assert json.loads(out.read_text())["pilot"]["paired"]["pairs"] == 3
    assert not list(tmp_path.glob(".*.tmp"))  # every write replaced the report whole


def test_a_chunks_estimate_never_falls_short_of_a_batched_chunks_cost():
    """A batched chunk costs a fixed part and a part a pair. Taking the last, larger chunk's
    cost a pair for a smaller chunk fell short (8 pairs then 2 ran 9 s past a 360 s box in a
    review's simulation); the estimate now bounds any cost that grows with the pairs, less than
    in proportion, from the first pair's cost and the last chunk's."""
    from benchmarks.gpu_check import chunk_estimate

    for fixed in (0.0, 2.0, 16.0, 60.0):
        for per_pair in (0.1, 1.0, 5.0):
            def cost(k, fixed=fixed, per_pair=per_pair):
                return fixed + per_pair * k
            first = cost(1) + 10.0  # the first pair also built the bank
            for last in range(1, 9):
                for k in range(1, 9):
                    assert chunk_estimate(k, first, last, cost(last)) >= cost(k) - 1e-9


def test_no_stage_starts_after_the_deadline_and_each_says_so(tmp_path):
    """A call that would run past the device call's limit skips its last stages, recorded, so
    the pilot's call still has its minutes."""
    from benchmarks.gpu_check import main

    out = tmp_path / "g.json"
    assert main(["--tiny", "--stages", "environment,sharing", "--deadline-seconds", "0",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"started", "environment", "sharing"}
    assert all("--deadline-seconds 0 passed" in report[s]["skipped"]
               for s in ("environment", "sharing"))


def test_the_paper_scale_configs_parse_with_a_relative_data_folder(tmp_path, monkeypatch):
    """The planned device call passes `--data data/cifar10-jpeg`; the trials stage used to parse
    its config after changing into the scratch folder, where that path named nothing, so the
    stage failed at once on the GPU (the CPU's --tiny form uses synthetic data and never saw
    it). Both paper-scale configs now parse from any folder."""
    import numpy as np

    from benchmarks.gpu_check import arguments, pilot_config, trials_config
    from raypoison.config.suite import parse_suite

    data = tmp_path / "checkout" / "data" / "cifar10-jpeg"
    data.mkdir(parents=True)
    (data / "cifar10-jpg-q75.tar.gz").write_bytes(b"")  # parsing checks that it exists
    np.save(data / "train_labels_original_order.npy", np.zeros(10, dtype=np.int64))
    np.save(data / "test_labels_first512.npy", np.zeros(10, dtype=np.int64))
    checkpoint = tmp_path / "net.pt"
    checkpoint.write_bytes(b"")
    monkeypatch.chdir(tmp_path / "checkout")
    args = arguments(["--data", "data/cifar10-jpeg", "--out", str(tmp_path / "out" / "g.json")])
    monkeypatch.chdir(tmp_path / "out")  # where the stages once ran: not the checkout
    trials = parse_suite(trials_config(args, "resnet18", checkpoint)).scenarios[0]
    assert trials.budget == 25 and trials.recipe.epochs == 40
    assert trials.dataset.params.root == str(data / "cifar10-jpg-q75.tar.gz")
    pilot = parse_suite(pilot_config(args, checkpoint)).scenarios[0]
    assert pilot.trials == 50 and pilot.mode == "transfer"
    assert list(pilot.dataset.params.classes) == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("code, said, within", [
    ("import sys; print('no CUDA', file=sys.stderr); sys.exit(3)", "failed before its window",
     2),
    ("import time; time.sleep(60)", "was not ready within 3 s", 8),
])
def test_a_sharing_process_that_dies_or_hangs_fails_the_stage_in_time(tmp_path, code, said,
                                                                      within):
    """The sharing stage waits for every process to warm up; one that dies says why (its
    standard error), and one that never gets ready no longer holds the lent device's minutes."""
    from benchmarks.gpu_check import _shared_rates

    with open(tmp_path / "err", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        start = time.monotonic()
        try:
            with pytest.raises(RuntimeError, match=said) as info:
                _shared_rates([proc], [err], timeout=3)
        finally:
            proc.kill()
            proc.wait()
    assert time.monotonic() - start < within
    if "no CUDA" in code:
        assert "no CUDA" in str(info.value)
