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
