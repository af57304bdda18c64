"""``raypoison pretrain``: the zoo as Ray tasks, and adversarial training that buys robustness."""

import json

import pytest
import yaml

from raypoison.config.suite import load_zoo
from raypoison.data import load_dataset
from raypoison.execution.zoo import pretrain_zoo
from raypoison.models import load_checkpoint
from raypoison.training.adversarial import robust_accuracy

DATASET = {"name": "synthetic", "params": {"classes": 4, "image_size": 12, "train_per_class": 60,
                                           "test_per_class": 25, "noise": 0.2, "seed": 5}}
RECIPE = {"lr": 0.05, "epochs": 8, "milestones": [6], "batch_size": 32, "augment": False}
ATTACK = {"epsilon": "16/255", "step": "4/255", "steps": 5}


@pytest.mark.slow
def test_zoo_trains_each_seed_once_and_adversarial_training_is_more_robust(ray_cluster, tmp_path):
    zoo_file = tmp_path / "zoo.yaml"
    zoo_file.write_text(yaml.safe_dump({
        "name": "tiny-zoo",
        "models": [
            {"name": "clean", "arch": "convnet", "params": {"width": 16}, "dataset": DATASET,
             "recipe": RECIPE, "seeds": [0]},
            {"name": "robust", "arch": "convnet", "params": {"width": 16}, "dataset": DATASET,
             "recipe": dict(RECIPE, adversarial=ATTACK), "seeds": [0]},
        ],
    }))
    zoo = load_zoo(zoo_file)
    out = tmp_path / "zoo"
    entries = pretrain_zoo(zoo, str(out))
    assert sorted(p.name for p in out.glob("*.pt")) == ["clean-s0.pt", "robust-s0.pt"]
    index = json.loads((out / "zoo.json").read_text())
    assert index["robust-s0.pt"]["robust_accuracy"] is not None
    assert entries[0]["clean_accuracy"] > 0.5
    mtime = (out / "clean-s0.pt").stat().st_mtime
    pretrain_zoo(zoo, str(out))  # nothing left to train
    assert (out / "clean-s0.pt").stat().st_mtime == mtime

    data = load_dataset(zoo.models[0].dataset)
    robust = {}
    for name in ("clean", "robust"):
        model, _ = load_checkpoint(out / f"{name}-s0.pt")
        robust[name] = robust_accuracy(model, data.test_x, data.test_y, epsilon=16 / 255,
                                       step=4 / 255, steps=10, seed=1)
    assert robust["robust"] > robust["clean"] + 0.1, robust


def test_a_present_checkpoint_is_kept_only_if_the_index_says_it_is_this_entry(tmp_path):
    """Checkpoints were reused by file name alone: after the entry changed (another architecture
    or recipe), the old weights stayed under the new description. A missing or damaged index
    crashed with KeyError or JSONDecodeError. Each now stops before any training, naming the
    file."""
    from raypoison.errors import ConfigError, DataError
    from raypoison.execution.zoo import _describe

    def zoo_with(epochs: int):
        zoo_file = tmp_path / f"zoo-{epochs}.yaml"
        zoo_file.write_text(yaml.safe_dump({"name": "z", "models": [
            {"name": "clean", "arch": "convnet", "dataset": DATASET,
             "recipe": dict(RECIPE, epochs=epochs), "seeds": [0]}]}))
        return load_zoo(zoo_file)

    from raypoison.models.checkpoint import build_model, checkpoint_bytes

    out = tmp_path / "out"
    out.mkdir()
    weights = checkpoint_bytes(build_model("convnet", 10, (0.5,) * 3, (0.25,) * 3), {})
    (out / "clean-s0.pt").write_bytes(weights)
    zoo = zoo_with(8)
    entry = {"clean-s0.pt": {**_describe(zoo.models[0], 0), "clean_accuracy": 0.9}}
    (out / "zoo.json").write_text(json.dumps(entry))
    assert pretrain_zoo(zoo, str(out)) == [entry["clean-s0.pt"]]  # present and the same: kept
    with pytest.raises(DataError, match=r"clean-s0.pt was trained from another zoo entry "
                                        r"\(recipe: .* in the index, .* in the config\)"):
        pretrain_zoo(zoo_with(9), str(out))
    older = {k: v for k, v in entry["clean-s0.pt"].items() if k != "identity"}
    (out / "zoo.json").write_text(json.dumps({"clean-s0.pt": dict(older, recipe={})}))
    assert pretrain_zoo(zoo, str(out))  # an index from before identities: arch and seed decide
    (out / "zoo.json").write_text(json.dumps({"clean-s0.pt": dict(older, arch="resnet18")}))
    with pytest.raises(DataError, match="arch: resnet18 in the index, convnet in the config"):
        pretrain_zoo(zoo, str(out))
    for index, said in (("{}", "does not describe it"), ("[]", "a zoo index is a JSON object"),
                        ('{"clean-s0.pt": {', "not a readable zoo index")):
        (out / "zoo.json").write_text(index)
        with pytest.raises(DataError, match=said):
            pretrain_zoo(zoo, str(out))
    assert (out / "clean-s0.pt").read_bytes() == weights  # nothing lost
    # the index trusted, the file not: a damaged checkpoint, or an accuracy that is not one
    (out / "zoo.json").write_text(json.dumps(entry))
    (out / "clean-s0.pt").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(DataError, match=r"clean-s0.pt: not a readable checkpoint .*; delete it "
                                        r"to train it again"):
        pretrain_zoo(zoo, str(out))
    (out / "clean-s0.pt").write_bytes(weights)
    for accuracy in ("high", None):
        (out / "zoo.json").write_text(json.dumps(
            {"clean-s0.pt": dict(entry["clean-s0.pt"], clean_accuracy=accuracy)}))
        with pytest.raises(DataError, match=rf"the entry of clean-s0.pt has clean_accuracy "
                                            rf"'?{accuracy}'?, not a number"):
            pretrain_zoo(zoo, str(out))
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        pretrain_zoo(zoo, str(tmp_path / "afile"))


@pytest.mark.slow
def test_pretrain_asking_for_gpus_trains_on_the_cpu_of_a_machine_without_one(tmp_path):
    """Both zoo configs ask for half a GPU per task; on a machine without one the tasks used to
    wait forever. The embedded instance has no GPU here (``--num-gpus`` is not given)."""
    import os
    import subprocess
    import sys

    zoo_file = tmp_path / "zoo.yaml"
    zoo_file.write_text(yaml.safe_dump({
        "name": "gpu-zoo", "gpus_per_task": 0.5, "cpus_per_task": 4,
        "models": [{"name": "clean", "arch": "convnet", "params": {"width": 8},
                    "dataset": DATASET, "recipe": dict(RECIPE, epochs=1, milestones=[]),
                    "seeds": [0]}]}))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", CUDA_VISIBLE_DEVICES="")
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "raypoison.cli", "pretrain", str(zoo_file),
                           "--output", str(tmp_path / "out"), "--num-cpus", "1"],
                          capture_output=True, text=True, timeout=240, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "clean-s0.pt").is_file()
    assert "trains on the CPU" in done.stderr + done.stdout


@pytest.mark.parametrize("change, said", [
    ({"models": []}, "models: a zoo needs at least one model"),
    ({"seeds": [2**70]}, r"models\[0\]\.seeds\[0\]: must lie in \[0, 2\*\*63\)"),
    ({"seeds": [-1]}, r"models\[0\]\.seeds\[0\]: must lie in"),
])
def test_an_empty_zoo_and_seeds_torch_cannot_take_are_refused(tmp_path, change, said):
    from raypoison.errors import ConfigError

    entry = {"name": "clean", "arch": "convnet", "dataset": DATASET, "recipe": RECIPE,
             "seeds": change.get("seeds", [0])}
    raw = {"name": "z", "models": change.get("models", [entry])}
    zoo_file = tmp_path / "zoo.yaml"
    zoo_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=said):
        load_zoo(zoo_file)
