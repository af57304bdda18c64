"""Every config in configs/ validates: keys, names, budgets against setups files, paths.

Data and checkpoints are stand-ins (empty files where only existence is checked); setups files
are the shared reference ones when RAYPOISON_DATA_ROOT is set, else generated with the budget.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from raypoison.config.suite import load_suite, load_zoo
from raypoison.data.setups import sample_setup, save_setups

CONFIGS = sorted(Path("configs").glob("*.yaml"))


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    for var in ("RAYPOISON_ZOO", "CIFAR_ROOT", "TINYIMAGENET_ROOT", "RAYPOISON_SETUPS"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    shared = os.environ.get("RAYPOISON_DATA_ROOT")
    if shared:
        monkeypatch.setenv("RAYPOISON_SETUPS", str(Path(shared).resolve() / "reference-setups"))
    else:
        monkeypatch.setenv("RAYPOISON_DATA_ROOT", str(tmp_path / "data"))
    return tmp_path, bool(shared)


def _create_paths(config: Path, root: Path, shared: bool) -> None:
    raw = yaml.safe_load(config.read_text())
    text = config.read_text()
    budgets = {s.get("setups"): s["budget"] for s in raw.get("scenarios", []) if s.get("setups")}
    for match in re.finditer(r"\$(\w+)(/[\w./-]+)?", text):
        var, rest = match.group(1), match.group(2) or ""
        path = Path(os.environ[var] + rest)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if match.group(0) in budgets and not shared:
            labels = np.repeat(np.arange(10), 600)
            save_setups([sample_setup(labels, labels, budget=budgets[match.group(0)], seed=0,
                                      index=i) for i in range(100)], path)
        elif path.suffix:
            path.write_bytes(b"")
        else:
            path.mkdir()


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_validates(config, stand_ins):
    root, shared = stand_ins
    _create_paths(config, root, shared)
    if config.stem.startswith("zoo-"):
        zoo = load_zoo(config)
        assert zoo.models
    else:
        suite = load_suite(config)
        assert all(s.trials >= 1 for s in suite.scenarios)


def test_the_benchmark_scenarios_are_all_there():
    names = {c.stem for c in CONFIGS}
    assert {"cifar10-transfer", "cifar10-scratch", "tinyimagenet-transfer",
            "tinyimagenet-scratch", "smoke", "cifar10-jpeg-cpu"} <= names


def _loaded(name: str, stand_ins) -> object:
    root, shared = stand_ins
    config = Path("configs") / f"{name}.yaml"
    _create_paths(config, root, shared)
    return load_zoo(config) if name.startswith("zoo-") else load_suite(config)


FOREST_STD = {"cifar10-scratch": (0.24703224, 0.24348514, 0.26158786),
              "tinyimagenet-scratch": (0.27698642, 0.26906449, 0.28208190)}


@pytest.mark.parametrize("name", sorted(FOREST_STD))
def test_the_from_scratch_benchmarks_brew_as_the_reference_did(name, stand_ins):
    """Witches' Brew in the from-scratch benchmark configs: forest's step units, its shift (an
    eighth of the side), its crafting recipe and, on Tiny-ImageNet, its ResNet-34."""
    suite = _loaded(name, stand_ins)
    [scenario] = suite.scenarios
    [brew] = [a for a in suite.attacks if a.name == "witches_brew"]
    p = brew.params
    assert p.fresh_model and p.step_std == pytest.approx(FOREST_STD[name])
    assert p.recipe.augmentation == "shift" and p.recipe.epochs == 40
    assert p.recipe.milestones == (14, 24, 35) and p.recipe.nesterov and p.recipe.lr == 0.1
    tiny = name.startswith("tinyimagenet")
    assert p.max_shift == (8 if tiny else 4)
    crafting = p.model or scenario.attackers[0]
    assert scenario.models[crafting].arch == ("resnet34" if tiny else "resnet18")


def test_the_tiny_imagenet_benchmarks_use_the_references_vgg16_models_and_recipe(stand_ins):
    for name in ("tinyimagenet-transfer", "tinyimagenet-scratch"):
        suite = _loaded(name, stand_ins)
        [scenario] = suite.scenarios
        assert scenario.models["vgg16"].params.last_pool == "max"
        [clbd] = [a for a in suite.attacks if a.name == "clean_label_backdoor"]
        assert clbd.params.model is None  # the attacker: the VGG16 trained normally
    zoo = _loaded("zoo-tinyimagenet", stand_ins)
    for entry in zoo.models:
        assert (entry.recipe.lr, entry.recipe.batch_size, entry.recipe.epochs,
                entry.recipe.milestones) == (0.01, 64, 200, (100, 150)), entry.name
        assert entry.recipe.momentum == 0.9 and entry.recipe.weight_decay == 2e-4
        if entry.arch == "vgg16":
            assert entry.params.last_pool == "max"
