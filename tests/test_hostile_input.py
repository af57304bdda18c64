"""Hostile and careless input: each is a clear refusal in bounded time and memory."""

import copy
import json
import math
import re
import resource
import socket
import time

import pytest
import yaml

from raypoison.cli import main
from raypoison.config.specs import count, expand
from raypoison.config.suite import MAX_CONFIG_VALUES, MAX_TRIALS, load_suite, parse_suite
from raypoison.core.schema import MAX_NAME_BYTES
from raypoison.errors import ConfigError
from tests.conftest import TINY, write_config


def _alias_bomb(levels: int) -> str:
    """The tiny config with a ``description`` (a string field) of nested aliases."""
    lines = ["description:", "  - &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"  - &a{i} [{refs}]")
    return yaml.safe_dump(copy.deepcopy(TINY), sort_keys=False) + "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_quickly_and_small(tmp_path):
    """Nine levels of ten aliases: 10^10 strings once expanded; refused before anything walks
    or prints them (it used to take 12 s and a 39 MB message at 7 levels)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(9))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tick = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert time.perf_counter() - tick < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200 * 1024  # KB
    assert "expands to" in str(info.value) and len(str(info.value)) < 500
    assert f"{MAX_CONFIG_VALUES:,}" in str(info.value)


def test_messages_quote_a_bounded_prefix_of_a_value():
    raw = copy.deepcopy(TINY)
    raw["scenarios"][0]["budget"] = ["x" * 100_000] * 50  # an integer was expected
    with pytest.raises(ConfigError) as info:
        parse_suite(raw)
    assert "scenarios[0].budget" in str(info.value) and len(str(info.value)) < 1000


def test_a_huge_trial_count_is_refused_at_once_and_counts_are_arithmetic():
    raw = copy.deepcopy(TINY)
    raw["scenarios"][0]["trials"] = 10**12
    tick = time.perf_counter()
    with pytest.raises(ConfigError, match=r"scenarios\[0\]\.trials.*at most"):
        parse_suite(raw)
    assert time.perf_counter() - tick < 2
    raw["scenarios"][0]["trials"] = MAX_TRIALS
    suite = parse_suite(raw)
    tick = time.perf_counter()
    assert count(suite) == MAX_TRIALS * 2
    assert count(suite, attacks=["none"], trials=range(5, 2**62)) == MAX_TRIALS - 5
    assert time.perf_counter() - tick < 1


@pytest.mark.parametrize("name, why", [
    ("s" * (MAX_NAME_BYTES + 1), "longer than"),
    ("scenario\n", "not a valid name"),
    ("bad/name", "not a valid name"),
])
def test_names_that_cannot_become_folders_are_refused_before_anything_runs(name, why):
    raw = copy.deepcopy(TINY)
    raw["scenarios"][0]["name"] = name
    with pytest.raises(ConfigError, match=why):
        parse_suite(raw)
    raw = copy.deepcopy(TINY)
    raw["attacks"][0]["label"] = name
    with pytest.raises(ConfigError, match=why):
        parse_suite(raw)


def test_a_name_as_long_as_allowed_makes_a_folder(tmp_path):
    raw = copy.deepcopy(TINY)
    raw["scenarios"][0]["name"] = "s" * MAX_NAME_BYTES
    parse_suite(raw)
    (tmp_path / f"scenario={'s' * MAX_NAME_BYTES}").mkdir()  # the partition folder fits


def test_bad_command_lines_exit_2_with_a_message(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", copy.deepcopy(TINY))
    (tmp_path / "utf16.yaml").write_bytes(config.read_text().encode("utf-16"))
    assert main(["validate", str(tmp_path / "utf16.yaml")]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    assert main(["validate", str(tmp_path / "latin1.yaml")]) == 2
    for trials in ("5:2", "-3:4", "x", "100:200", "4"):  # the scenario has trials 0 to 3
        assert main(["run", str(config), "--output", str(tmp_path / "o"), f"--trials={trials}"]) == 2
        assert "--trials" in capsys.readouterr().err
    for flag, value in (("--workers", "0"), ("--workers", "-2"), ("--num-cpus", "0"),
                        ("--num-gpus", "-1")):
        assert main(["run", str(config), "--output", str(tmp_path / "o"), flag, value]) == 2
        assert f"{flag}: must be" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written
    assert main(["compact", str(tmp_path / "absent")]) == 2
    assert "no results folder to compact" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "results").write_text("")  # a file where the results folder goes
    for command in (["report", str(tmp_path / "flat")], ["compact", str(tmp_path / "flat")]):
        assert main(command) == 2
        assert "is a file where a folder was expected" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty"), "--csv", str(tmp_path / "no" / "x.csv")]) == 2
    assert "--csv: no folder" in capsys.readouterr().err
    for extra, said in ((["--html", str(tmp_path)], "--html: "),
                        (["--figures", str(tmp_path / "file")], "--figures: "),
                        (["--compare", "a", "a"], "with itself"),
                        (["--compare-scenarios", "s", "s"], "with itself")):
        assert main(["report", str(tmp_path / "empty"), *extra]) == 2
        assert said in capsys.readouterr().err, extra
    (tmp_path / "file").write_text("")
    assert main(["run", str(config), "--output", str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "absent does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no results in" in capsys.readouterr().err
    assert main(["validate", str(config)]) == 0
    out = capsys.readouterr().out
    assert "8 trials" in out and "saved" not in out


def test_a_foreign_part_with_an_uncastable_value_is_skipped_by_every_reader(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raypoison.store import results
    from raypoison.store.compact import compact
    from raypoison.store.rows import SCHEMA_VERSION
    from raypoison.store.sink import ParquetSink
    from raypoison.store.storage import Location

    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    sink.add([{"schema_version": SCHEMA_VERSION, "trial_id": "t1", "scenario": "s",
               "attack": "a", "victim": "v", "role": "white-box", "trial": 0, "status": "ok",
               "success": True, "defense": "none"}])
    sink.flush()
    folder = tmp_path / "results" / "scenario=s" / "attack=a"
    foreign = pa.table({"trial_id": ["t2"], "victim": ["v"], "status": ["ok"],
                        "trial": ["notanint"], "success": [True]})
    pq.write_table(foreign, folder / "part-foreign.parquet")
    with pytest.warns(UserWarning, match="part-foreign.parquet"):
        df = results.load(str(tmp_path))
    assert df["trial_id"].tolist() == ["t1"]
    with pytest.warns(UserWarning, match="part-foreign.parquet"):
        assert main(["report", str(tmp_path)]) == 0
    with pytest.warns(UserWarning, match="part-foreign.parquet"):
        compact(str(tmp_path))
    with pytest.warns(UserWarning):
        assert results.load(str(tmp_path))["trial_id"].tolist() == ["t1"]


def test_the_restricted_unpickler_refuses_to_build_huge_arrays(tmp_path):
    """26 bytes that call numpy.ndarray((10**9,)) asked for 8 GB before any count check."""
    import pickle

    import numpy as np

    from raypoison.core.safe_pickle import restricted_load_file, restricted_loads
    from raypoison.errors import DataError

    bomb = b"\x80\x02cnumpy\nndarray\nJ\x00\xca\x9a;\x85\x85R."
    with pytest.raises(pickle.UnpicklingError, match="1,000,000,000 elements"):
        restricted_loads(bomb)
    (tmp_path / "base_indices.pickle").write_bytes(bomb)
    with pytest.raises(DataError, match="base_indices.pickle.*refused an array"):
        restricted_load_file(tmp_path / "base_indices.pickle")
    big = pickle.dumps(np.zeros(300_000), protocol=4)  # 2.4 MB, carried in the file
    with pytest.raises(pickle.UnpicklingError, match="over the 1,048,576-byte bound"):
        restricted_loads(big, max_array_bytes=2**20)
    fine = restricted_loads(pickle.dumps({"i": np.arange(5)}, protocol=4))
    assert type(fine["i"]) is np.ndarray and fine["i"].tolist() == [0, 1, 2, 3, 4]


def _pickled_as_on_a_gpu(tensor) -> bytes:
    """``pickle.dumps(tensor)`` as a machine with CUDA writes it for a tensor on ``cuda:0``: the
    same bytes but the storage's location (made here by rewriting the location of a CPU pickle;
    both length prefixes that frame it grow with it)."""
    import io
    import pickle

    import torch

    blob = pickle.dumps(tensor, protocol=2)
    inner: list[bytes] = []

    class Capture(pickle.Unpickler):  # our own bytes: reads the storage's legacy save
        def find_class(self, module, name):
            if name == "_load_from_bytes":
                return lambda b: inner.append(b) or torch.storage._load_from_bytes(b)
            return super().find_class(module, name)

    Capture(io.BytesIO(blob)).load()
    on_gpu = inner[0].replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    assert on_gpu != inner[0]

    def framed(raw: bytes) -> bytes:  # protocol 2 carries bytes as latin-1 text, BINUNICODE
        text = raw.decode("latin1").encode("utf-8")
        return b"X" + len(text).to_bytes(4, "little") + text

    assert blob.count(framed(inner[0])) == 1
    return blob.replace(framed(inner[0]), framed(on_gpu))


def test_a_patch_tensor_pickled_on_a_gpu_is_rebuilt_on_the_cpu():
    """The reference's target.pickle carries its backdoor patch as a pickled tensor; one saved
    from a GPU names cuda:0, which a machine without CUDA refused to rebuild."""
    import torch

    from raypoison.core.safe_pickle import restricted_loads

    patch = torch.arange(12, dtype=torch.float32).view(3, 2, 2)
    loaded = restricted_loads(_pickled_as_on_a_gpu(patch), allow_tensors=True)
    assert loaded.device.type == "cpu" and torch.equal(loaded, patch)


def test_external_poisons_are_keyed_by_their_content_not_their_path(tmp_path):
    """Overwriting ROOT/0/poisons.pickle used to reuse the old rows ("already done")."""
    root = tmp_path / "poisons"
    (root / "0").mkdir(parents=True)
    (root / "0" / "poisons.pickle").write_bytes(b"first version")
    raw = copy.deepcopy(TINY)
    raw["attacks"] = [{"name": "external", "params": {"root": str(root)}}]
    before = [s.trial_id for s in expand(parse_suite(raw))]
    (root / "0" / "poisons.pickle").write_bytes(b"second version")
    after = [s.trial_id for s in expand(parse_suite(raw))]
    assert set(before).isdisjoint(after)


def test_external_folders_reordered_float_indices_and_one_bad_folder_in_a_batch(
        tmp_path, tiny_raw, tiny_checkpoint):
    """The right (poison, index) pairs in another order are reordered (the reference accepts
    them); float indices are refused, not truncated; with craft_batch > 1 a bad folder fails its
    own trial only."""
    import pickle

    import numpy as np
    import torch

    from raypoison.formats.trial_folder import TrialFolder, read_trial_folder, write_trial_folder
    from raypoison.trial.context import TrialContext
    from raypoison.trial.run import run_trials

    tiny_raw["attacks"] = [{"name": "external", "params": {"root": str(tmp_path)}}]
    suite = parse_suite(tiny_raw)
    ctx = TrialContext.create(suite.scenarios[0], {"net-a": tiny_checkpoint})
    specs = [s for s in expand(suite)][:3]
    shifted = {}
    for spec in specs:
        setup = ctx.setup(spec.index)
        bases = ctx.data.train_x[list(setup.base_indices)]
        shifted[spec.index] = (bases.int() + 3).clamp(0, 255).to(torch.uint8)
        order = [2, 0, 1] if spec.index == 0 else [0, 1, 2]
        folder = TrialFolder(shifted[spec.index][order], (setup.base_class,) * 3,
                             tuple(setup.base_indices[i] for i in order),
                             ctx.data.test_x[setup.target_index], setup.target_class)
        write_trial_folder(tmp_path / str(spec.index), folder)
    floats = np.asarray(ctx.setup(1).base_indices, dtype=np.float64) + 0.9
    (tmp_path / "1" / "base_indices.pickle").write_bytes(pickle.dumps(floats, protocol=4))
    from raypoison.errors import DataError

    with pytest.raises(DataError, match="base_indices.pickle.*integers"):
        read_trial_folder(tmp_path / "1")
    rows = run_trials(specs, ctx)  # one batch of three trials
    (reordered,), (bad,), (fine,) = rows
    assert reordered["status"] == "ok", reordered["error"]
    assert reordered["poison_linf"] == 3 / 255 and fine["status"] == "ok"
    assert bad["status"] == "failed" and "integers" in bad["error"]


def test_compact_takes_the_results_folder_and_a_non_object_manifest_is_skipped(tmp_path, capsys):
    from raypoison.store import results
    from raypoison.store.rows import SCHEMA_VERSION
    from raypoison.store.sink import ParquetSink
    from raypoison.store.storage import Location

    for run in ("r1", "r2"):
        sink = ParquetSink(Location.parse(str(tmp_path)), run)
        sink.add([{"schema_version": SCHEMA_VERSION, "trial_id": f"t-{run}", "scenario": "s",
                   "attack": "a", "victim": "v", "role": "white-box", "trial": 0,
                   "status": "ok", "success": True, "defense": "none"}])
        sink.flush()
    assert main(["compact", str(tmp_path / "results")]) == 0
    assert "2 files -> 1" in capsys.readouterr().out
    assert len(results.load(str(tmp_path))) == 2
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "run-x.json").write_text("[1, 2, 3]")
    with pytest.warns(UserWarning, match="run-x.json.*JSON object"):
        assert main(["report", str(tmp_path)]) == 0
    (tmp_path / "manifests" / "run-x.json").unlink()
    (tmp_path / "manifests" / "run-r1.json").write_text(json.dumps({
        "run_id": "r1", "status": "running", "host": socket.gethostname(), "pid": "abc",
        "started_at": 5, "trials": {"planned": "16", "skipped_already_done": 0}, "models": 5}))
    (tmp_path / "manifests" / "run-r2.json").write_text(json.dumps({
        "run_id": "r2", "trials": [1], "status": "running", "host": socket.gethostname(),
        "pid": 10**30}))  # well typed, but no process id: os.kill overflows
    (tmp_path / "manifests" / "run-r3.json").write_text('{"run_id": "r3", "sta')
    with pytest.warns(UserWarning) as caught:
        assert main(["report", str(tmp_path)]) == 0
    said = " ".join(str(w.message) for w in caught)
    assert "run-r1.json: ignoring started_at, pid, models, trials.planned" in said
    assert "run-r2.json: ignoring trials" in said and "run-r3.json: not a readable manifest" in said
    out = capsys.readouterr().out
    assert "run r1 [running]" in out and "run r2 [stopped]" in out  # the rest still shown


@pytest.mark.slow
def test_a_failed_write_leaves_no_temporary_file_and_a_manifest_that_says_so(ray_cluster,
                                                                              tmp_path):
    """Real write failures, as on a disk that fills up during a run: the partition folder's
    place is taken by a file, so every part write fails with an OS error."""
    import json

    from raypoison.errors import ResultsError
    from raypoison.execution.runner import RunOptions, run_suite
    from raypoison.store.storage import Location
    from tests.conftest import noop_raw

    # the storage layer: a failed move leaves no temporary file behind
    folder = tmp_path / "x"
    (folder / "taken").mkdir(parents=True)
    with pytest.raises(OSError):
        Location.parse(str(folder)).write_bytes(str(folder / "taken"), b"data")
    assert sorted(p.name for p in folder.iterdir()) == ["taken"]

    raw = noop_raw(trials=30, seconds=0.0)
    raw["execution"].update(rows_per_file=100_000, flush_seconds=600)
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "results" / "scenario=tiny-transfer").write_text("a file where a folder goes")
    with pytest.raises(ResultsError, match="could not write 30 rows.*computes them"):
        run_suite(parse_suite(raw), RunOptions(output=str(out)))
    hidden = [p.name for p in (out / "results").iterdir()]
    assert hidden == ["scenario=tiny-transfer"]  # no hidden .tmp part left behind
    (manifest,) = (out / "manifests").glob("run-*.json")
    content = json.loads(manifest.read_text())
    assert content["status"] == "failed" and content["rows_not_written"] == 30
    assert "could not write 30 rows" in content["error"]


def test_an_interrupted_validate_does_not_claim_to_have_saved_trials(tmp_path, capsys,
                                                                      monkeypatch):
    """Ctrl-C (or SIGTERM, which the command line turns into the same) during ``validate``."""
    import raypoison.config.specs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(raypoison.config.specs, "count", interrupted)
    config = write_config(tmp_path / "c.yaml", copy.deepcopy(TINY))
    assert main(["validate", str(config)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "saved" not in err


@pytest.mark.parametrize("label, found", [(1.9, "1.9' (float)"), ("x", "'x' (str)"),
                                          (None, "'None' (NoneType)"), (True, "(bool)")])
def test_a_poison_label_that_is_not_an_integer_is_refused_naming_the_poison(tmp_path, label,
                                                                            found):
    """A float label used to be cut (1.9 became 1: a poison's label silently changed) and a
    string failed at craft time without a file named."""
    import pickle

    import numpy as np
    import torch

    from raypoison.errors import DataError
    from raypoison.formats.trial_folder import TrialFolder, read_trial_folder, write_trial_folder

    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    write_trial_folder(tmp_path, TrialFolder(images, (1, 1, 1), (4, 5, 6), images[0], 2))
    assert read_trial_folder(tmp_path).labels == (1, 1, 1)
    poisons = pickle.loads((tmp_path / "poisons.pickle").read_bytes())  # our own file
    poisons[1] = (poisons[1][0], np.array(1))  # a 0-d integer array is an integer label
    (tmp_path / "poisons.pickle").write_bytes(pickle.dumps(poisons, protocol=4))
    assert read_trial_folder(tmp_path).labels == (1, 1, 1)
    poisons[2] = (poisons[2][0], label)
    (tmp_path / "poisons.pickle").write_bytes(pickle.dumps(poisons, protocol=4))
    with pytest.raises(DataError, match=rf"poisons.pickle\[2\]: a label must be an integer class, "
                                        rf"found .*{re.escape(found)}"):
        read_trial_folder(tmp_path)


@pytest.mark.parametrize("at, fits", [((0, 0), True), ((5, 1), True), ((-1, 2), False),
                                      ((6, 0), False), ((0, 6), False)])
def test_a_patch_outside_the_image_is_refused_when_read_not_after_training(tmp_path, at, fits):
    import torch

    from raypoison.errors import DataError
    from raypoison.formats.trial_folder import TrialFolder, read_trial_folder, write_trial_folder

    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    patch = torch.randint(0, 256, (3, 3, 3), dtype=torch.uint8)
    write_trial_folder(tmp_path, TrialFolder(images, (1, 1), (4, 5), images[0], 2, patch=patch,
                                             patch_at=at))
    if fits:
        assert read_trial_folder(tmp_path).patch_at == at
    else:
        with pytest.raises(DataError, match=rf"target.pickle: a 3x3 patch at \[start_x={at[0]}, "
                                            rf"start_y={at[1]}\] does not fit in the 8x8"):
            read_trial_folder(tmp_path)


def test_a_setups_base_index_outside_the_training_set_names_the_file_and_entry(
        tmp_path, tiny_raw, tiny_checkpoint):
    import json

    from raypoison.trial.context import TrialContext

    entries = [{"target_class": 0, "target_index": 0, "base_class": 1,
                "base_indices": [40, 41, 42 + 1000 * i]} for i in range(2)]
    (tmp_path / "setups.json").write_text(json.dumps(entries))
    tiny_raw["scenarios"][0].update(setups=str(tmp_path / "setups.json"), trials=2)
    ctx = TrialContext.create(parse_suite(tiny_raw).scenarios[0], {"net-a": tiny_checkpoint})
    assert ctx.setup(0).base_indices == (40, 41, 42)  # 160 training images: inside
    with pytest.raises(ValueError, match=r"setups.json\[1\]: base indices \[1042\] lie outside "
                                         r"the training set \(160 images\)"):
        ctx.setup(1)


def test_a_training_that_diverges_fails_its_trial_instead_of_writing_a_model_of_nans(
        tiny_raw, tiny_checkpoint):
    """A recipe whose loss becomes NaN used to write ok rows for a model of NaN weights."""
    import dataclasses

    import torch

    from raypoison.models import build_model
    from raypoison.training.loop import TrainingDiverged, train
    from raypoison.training.recipe import RecipeConfig
    from raypoison.trial.context import TrialContext
    from raypoison.trial.run import run_trials

    recipe = RecipeConfig(lr=1e30, epochs=3, milestones=(), batch_size=16)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8)
    labels = torch.arange(64) % 4
    model = build_model("convnet", 4, (0.5,) * 3, (0.25,) * 3, 12, None)
    with pytest.raises(TrainingDiverged, match=r"the loss became nan by step \d+ \(lr 1e\+30"):
        train(model, images, labels, recipe=recipe, seed=1, trainable="all")
    fresh = build_model("convnet", 4, (0.5,) * 3, (0.25,) * 3, 12, None)
    sane = train(fresh, images, labels, recipe=dataclasses.replace(recipe, lr=0.01), seed=1,
                 trainable="all")
    assert math.isfinite(sane.final_loss)  # a sane rate trains to a finite loss

    tiny_raw["scenarios"][0]["recipe"]["lr"] = 1e30
    tiny_raw["attacks"] = [{"name": "none"}]
    suite = parse_suite(tiny_raw)
    ctx = TrialContext.create(suite.scenarios[0], {"net-a": tiny_checkpoint})
    (rows,) = run_trials(list(expand(suite))[:1], ctx)
    assert [r["status"] for r in rows] == ["failed"]
    assert rows[0]["error"].startswith("train: ") and "diverged" in rows[0]["error"]


def test_a_model_whose_last_update_blew_up_is_not_evaluated_as_if_it_were_sane():
    """The loss is read before the last update, and huge finite weights can still give NaN or
    infinite outputs: the evaluation itself refuses them (argmax would call them class 0)."""
    import torch

    from raypoison.core.registry import build_component
    from raypoison.data import DATASETS, load_dataset
    from raypoison.data.setups import sample_setup
    from raypoison.models import build_model
    from raypoison.training.loop import TrainingDiverged
    from raypoison.trial.evaluate import evaluate_victim

    data = load_dataset(build_component(TINY["scenarios"][0]["dataset"], "dataset", DATASETS))
    setup = sample_setup(data.train_y.numpy(), data.test_y.numpy(), budget=3, seed=0, index=0)
    model = build_model("convnet", 4, data.mean, data.std, 12, None)
    assert 0 <= evaluate_victim(model, data, setup).clean_accuracy <= 1  # a sane model
    with torch.no_grad():  # finite weights whose products overflow
        model.head.weight.copy_(torch.sign(model.head.weight) * 3e38)
    assert bool(torch.isfinite(model.head.weight).all())
    with pytest.raises(TrainingDiverged, match="outputs on the test set are NaN or infinite"):
        evaluate_victim(model, data, setup)


def test_weights_broken_by_the_last_update_fail_the_training():
    import torch

    from raypoison.models import build_model
    from raypoison.training.loop import TrainingDiverged, train
    from raypoison.training.recipe import RecipeConfig

    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    labels = torch.arange(16) % 4
    model = build_model("convnet", 4, (0.5,) * 3, (0.25,) * 3, 12, None)
    recipe = RecipeConfig(lr=float("inf"), epochs=1, milestones=(), batch_size=16)  # unvalidated
    with pytest.raises(TrainingDiverged, match="weights became NaN or infinite by step 1"):
        train(model, images, labels, recipe=recipe, seed=1, trainable="all")


def test_addresses_ray_takes_pass_the_check():
    import socket as sockets

    from raypoison.execution.cluster import check_address

    for address in ("auto", "local", "ray://head:10001"):
        check_address(address)
    for family, host in ((sockets.AF_INET, "127.0.0.1"), (sockets.AF_INET6, "::1")):
        try:
            server = sockets.socket(family)
            server.bind((host, 0))
        except OSError:
            continue  # no IPv6 on this machine
        server.listen()
        port = server.getsockname()[1]
        check_address(f"[{host}]:{port}" if family == sockets.AF_INET6 else f"{host}:{port}")
        server.close()


@pytest.mark.parametrize("address, said", [
    ("127.0.0.1:1", "nothing answers at 127.0.0.1:1"),
    ("http://127.0.0.1:8265", "the dashboard's address, for `ray job submit`"),
    ("headnode", "is not host:port"),
])
def test_a_cluster_address_nothing_answers_at_is_refused_in_seconds(tmp_path, capsys, address,
                                                                    said):
    """``ray.init`` retried for minutes printing only its own messages (and not the address)."""
    from raypoison.execution.cluster import check_address

    tick = time.monotonic()
    with pytest.raises(ConfigError, match=re.escape(said)):
        check_address(address)
    config = write_config(tmp_path / "c.yaml", copy.deepcopy(TINY))
    assert main(["run", str(config), "--output", str(tmp_path / "o"), "--address", address]) == 2
    assert said in capsys.readouterr().err and time.monotonic() - tick < 30
    assert not (tmp_path / "o" / "results").exists()


def test_a_checkpoint_of_other_architecture_parameters_is_refused(tiny_checkpoint, tmp_path):
    """A checkpoint rebuilds the network it records; where the config describes another one
    (a wider ConvNet, VGG16's other last pool), the run is refused before it starts, naming the
    file and the key, instead of computing with it."""
    from raypoison.errors import DataError
    from raypoison.execution.checkpoints import check_checkpoint_files
    from raypoison.trial.context import TrialContext

    (tmp_path / "net-a.pt").write_bytes(tiny_checkpoint)
    raw = copy.deepcopy(TINY)
    raw["scenarios"][0]["models"]["net-a"] = {"arch": "convnet", "params": {"width": 16},
                                              "checkpoint": str(tmp_path / "net-a.pt")}
    suite = parse_suite(raw)
    with pytest.raises(DataError, match=r"model net-a: .*net-a.pt holds a convnet with "
                                        r"\{'width': 32\}, the config says \{'width': 16\} "
                                        r"\(models.net-a.params\)"):
        check_checkpoint_files(list(suite.scenarios))
    ctx = TrialContext.create(suite.scenarios[0], {"net-a": tiny_checkpoint})
    with pytest.raises(ValueError, match=r"model 'net-a': checkpoint holds a convnet with "
                                         r"\{'width': 32\}, the config says \{'width': 16\}"):
        ctx.model("net-a")
    raw["scenarios"][0]["models"]["net-a"]["params"] = {"width": 32}
    check_checkpoint_files(list(parse_suite(raw).scenarios))  # the same network: accepted
    same = parse_suite(copy.deepcopy(TINY))
    assert TrialContext.create(same.scenarios[0], {"net-a": tiny_checkpoint}).model("net-a")


def _reconstructed(shape: int, dtype: str) -> bytes:
    """84 bytes that ask numpy's ``_reconstruct`` (how every pickled array begins) for an
    array of ``shape`` elements, as a pickled array never does (it asks for none, then sets its
    state from the bytes it carries)."""
    return (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ"
            + shape.to_bytes(4, "little") + b"\x85cnumpy\ndtype\nX"
            + len(dtype).to_bytes(4, "little") + dtype.encode() + b"\x85R\x87R.")


def test_the_restricted_unpickler_bounds_every_way_to_an_array_or_tensor():
    """``_reconstruct`` of 2e8 objects filled 1.6 GB before the size check; an object state set
    on a numeric array crashed numpy; a pickled tensor of stride 0 claimed any size from one
    float. Each is refused before anything is allocated, and ordinary arrays still load."""
    import pickle

    import numpy as np
    import torch

    from raypoison.core.safe_pickle import restricted_loads

    with pytest.raises(pickle.UnpicklingError, match="Python objects"):
        restricted_loads(_reconstructed(200_000_000, "O8"))  # checked after 1.6 GB, before
    with pytest.raises(pickle.UnpicklingError, match="200,000,000 elements"):
        restricted_loads(_reconstructed(200_000_000, "f8"))
    class ObjectState:
        def __reduce__(self):
            return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                    (1, (10**9,), np.dtype("O"), False, [1, 2]))

    with pytest.raises(pickle.UnpicklingError, match="Python objects"):
        restricted_loads(pickle.dumps(ObjectState(), protocol=4))  # numpy segfaulted here
    claimed = pickle.dumps(torch.full((1,), 0.5).expand(3, 8000, 8000), protocol=2)
    assert len(claimed) < 2000
    with pytest.raises(pickle.UnpicklingError, match="tensor of 768,000,000 bytes"):
        restricted_loads(claimed, allow_tensors=True)
    fine = restricted_loads(pickle.dumps([np.arange(4.0), np.zeros((2, 3), np.uint8)], 4))
    assert fine[0].tolist() == [0, 1, 2, 3] and fine[1].shape == (2, 3)


def test_an_integer_patch_outside_0_255_is_refused_and_a_huge_one_costs_nothing(tmp_path):
    """An integer patch of 1000s and -7s was clamped to [0, 255] without a word (a float one
    outside [0, 1] was refused); a patch larger than the target image was copied four times
    before the size check (3 × 30,000² claimed from one float: 15 GB)."""
    import pickle

    import numpy as np
    import torch

    from raypoison.errors import DataError
    from raypoison.formats.trial_folder import TrialFolder, read_trial_folder, write_trial_folder

    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    write_trial_folder(tmp_path, TrialFolder(images, (1, 1), (4, 5), images[0], 2))
    image, label = pickle.loads((tmp_path / "target.pickle").read_bytes())  # our own file

    def target(patch):
        (tmp_path / "target.pickle").write_bytes(pickle.dumps((image, label, patch, [0, 0]), 4))

    target(np.full((3, 3, 3), 255, np.int64))
    assert read_trial_folder(tmp_path).patch.eq(255).all()
    bad = np.full((3, 3, 3), 1000, np.int64)
    bad[0] = -7
    target(bad)
    with pytest.raises(DataError, match=r"target.pickle: an integer patch's values must lie in "
                                        r"\[0, 255\], found -7 to 1000"):
        read_trial_folder(tmp_path)
    target(torch.full((1,), 0.5).expand(3, 2000, 2000))  # 48 MB claimed by 4 bytes
    with pytest.raises(DataError, match="over the 16,777,216-byte bound"):
        read_trial_folder(tmp_path)
    # under the bound, a patch larger than the image is refused before its values are read
    # (which copies it): values outside [0, 1] would be the error if they were read first
    target(torch.full((1,), 2.0).expand(3, 1000, 1000))
    with pytest.raises(DataError, match="a 1000x1000 patch .* does not fit in the 8x8"):
        read_trial_folder(tmp_path)


def test_external_poisons_for_another_target_class_fail_their_trial_naming_the_file(
        tmp_path, tiny_raw, tiny_checkpoint):
    """``target.pickle``'s label is the target's class in the reference format; a folder whose
    label is not the setup's target class was made for another setup, and used to run."""
    from raypoison.formats.trial_folder import TrialFolder, write_trial_folder
    from raypoison.trial.context import TrialContext
    from raypoison.trial.run import run_trials

    tiny_raw["attacks"] = [{"name": "external", "params": {"root": str(tmp_path)}}]
    suite = parse_suite(tiny_raw)
    ctx = TrialContext.create(suite.scenarios[0], {"net-a": tiny_checkpoint})
    specs = list(expand(suite))[:2]
    for spec in specs:
        setup = ctx.setup(spec.index)
        label = setup.target_class if spec.index == 0 else setup.base_class
        write_trial_folder(tmp_path / str(spec.index), TrialFolder(
            ctx.data.train_x[list(setup.base_indices)], (setup.base_class,) * len(
                setup.base_indices), tuple(setup.base_indices),
            ctx.data.test_x[setup.target_index], label))
    (right,), (wrong,) = run_trials(specs, ctx)
    assert right["status"] == "ok", right["error"]
    setup = ctx.setup(specs[1].index)
    assert wrong["status"] == "failed" and (
        f"{tmp_path}/1/target.pickle: its target is labelled {setup.base_class}, but trial 1's "
        f"target (test image {setup.target_index}) is of class {setup.target_class}"
        in wrong["error"])


@pytest.mark.parametrize("field, value, says", [
    ("num_classes", -3, "malformed metadata (num_classes=-3)"),
    ("num_classes", 2_000_000, "weights do not fit convnet as its metadata describes it"),
    ("params", {"width": 1000}, "weights do not fit convnet as its metadata describes it"),
    ("params", {"wdith": 8}, "cannot rebuild convnet"),
    ("arch", "resnet81", "cannot rebuild resnet81: unknown model 'resnet81'"),
    ("meta", [1, 2], "malformed metadata (meta=[1, 2])"),
    ("state_dict", [1, 2], "its weights are not a mapping of names to tensors"),
    ("state_dict", {5: "x"}, "its weights are not a mapping of names to tensors"),
])
def test_a_checkpoint_with_malformed_metadata_is_refused_naming_it_before_building(
        tmp_path, tiny_checkpoint, field, value, says):
    """Metadata a file claims used to reach the model's constructor as it was: a negative class
    count or a list for ``meta`` crashed with a traceback naming no file, and two million
    classes or a width of 1,000 allocated gigabytes before the weights were found not to fit."""
    import io

    import torch

    from raypoison.errors import DataError
    from raypoison.models.checkpoint import load_checkpoint

    payload = torch.load(io.BytesIO(tiny_checkpoint), weights_only=True)
    payload[field] = value
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(DataError) as caught:
        load_checkpoint(path)  # "as its metadata describes it": compared before it was built
    assert str(caught.value).startswith(f"{path}: ") and says in str(caught.value)


def test_a_reference_checkpoint_without_batchnorm_counters_still_loads():
    """Checkpoints of PyTorch before 0.4.1 lack BatchNorm's ``num_batches_tracked``, which
    ``load_state_dict`` fills in; the shapes compared before building must not refuse them."""
    import io

    import torch

    from raypoison.models.checkpoint import build_model, load_checkpoint

    model = build_model("resnet18", 10, (0.5,) * 3, (0.25,) * 3)
    state = {("module." + k.replace("extractor.", "").replace("head.", "linear.")): v
             for k, v in model.state_dict().items()
             if k not in ("mean", "std") and not k.endswith("num_batches_tracked")}
    buffer = io.BytesIO()
    torch.save({"net": state}, buffer)
    loaded, meta = load_checkpoint(buffer.getvalue(), arch="resnet18", mean=(0.5,) * 3,
                                   std=(0.25,) * 3)
    assert meta["imported_from"] == "reference"
    assert torch.equal(loaded.head.weight, model.head.weight)


def test_a_weight_that_claims_more_than_it_stores_is_refused(tmp_path, tiny_checkpoint):
    import io

    import torch

    from raypoison.errors import DataError
    from raypoison.models.checkpoint import load_checkpoint

    payload = torch.load(io.BytesIO(tiny_checkpoint), weights_only=True)
    name, weight = next((k, v) for k, v in payload["state_dict"].items() if v.ndim == 4)
    payload["state_dict"][name] = torch.zeros(1).expand(weight.shape)
    torch.save(payload, tmp_path / "claims.pt")
    with pytest.raises(DataError, match=rf"claims.pt: tensor {re.escape(name)} claims"):
        load_checkpoint(tmp_path / "claims.pt")


@pytest.mark.parametrize("case", ["deep", "long integer", "nan", "pretrain seed"])
def test_yaml_the_parser_cannot_read_and_values_out_of_range_name_the_file(tmp_path, capsys,
                                                                           case):
    """Lists nested 600 deep (a 1.2 KB file) and an integer of 5,000 digits crashed the CLI with
    a traceback; NaN named its key but not the file; a pre-training seed of 10**26 passed
    ``validate`` and failed the run after its manifest was written."""
    raw = copy.deepcopy(TINY)
    if case == "pretrain seed":
        model = next(iter(raw["scenarios"][0]["models"].values()))
        model["pretrain"] = {"seed": 10**26}
    text = yaml.safe_dump(raw, sort_keys=False)
    text += {"deep": "description: " + "[" * 600 + "]" * 600 + "\n",
             "long integer": "seed: " + "7" * 5000 + "\n",
             "nan": "", "pretrain seed": ""}[case]
    if case == "nan":
        text = text.replace("budget: 3", "budget: .nan")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    said = capsys.readouterr().err
    assert said.startswith(f"error: {path}") and "Traceback" not in said, said
    assert {"deep": "nests lists or mappings deeper than can be read",
            "long integer": "holds a value that cannot be read",
            "nan": "scenarios[0].budget: must be a finite number",
            "pretrain seed": "pretrain.seed: must lie in [0, 2**63), got 10000000000000000000"
            }[case] in said
