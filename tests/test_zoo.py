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
