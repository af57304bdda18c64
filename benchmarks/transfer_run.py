"""What the transfer diagnostics share: a config's transfer scenario, its trial context on the
pre-trained models a run cached under ``OUTPUT/models/`` (both exit with a message naming what is
missing), and a test image's nearest same-class neighbours. Imported by ``transfer_margins.py``,
``collision_bound.py`` and ``collision_distance.py``, which run as scripts from this folder."""

from __future__ import annotations

from pathlib import Path

import torch

from raypoison.config.suite import ScenarioConfig, SuiteConfig, load_suite
from raypoison.execution.checkpoints import local_checkpoint, models_of
from raypoison.trial.context import TrialContext


def transfer_scenario(config: str, name: str | None) -> tuple[SuiteConfig, ScenarioConfig]:
    """The suite and its transfer scenario ``name`` (default: the first)."""
    suite = load_suite(config)
    named = [s for s in suite.scenarios if s.name == name]
    if name and not named:
        raise SystemExit(f"no scenario {name!r} in {config} "
                         f"(it has {', '.join(s.name for s in suite.scenarios)})")
    scenario = named[0] if named else suite.scenarios[0]
    if scenario.mode != "transfer":
        raise SystemExit(f"scenario {scenario.name} is not a transfer scenario")
    return suite, scenario


def cached_context(scenario: ScenarioConfig, output: str) -> TrialContext:
    """``scenario``'s trial context on the models cached under ``output``/models."""
    checkpoints = {}
    for name in models_of(scenario):
        path = local_checkpoint(scenario.models[name], scenario, Path(output, "models"))
        if path is None or not path.is_file():
            raise SystemExit(f"model {name}: no checkpoint under {output}/models; "
                             "run the config first")
        checkpoints[name] = path
    return TrialContext.create(scenario, checkpoints)


def neighbours(features: torch.Tensor, labels: torch.Tensor, index: int, k: int) -> torch.Tensor:
    """Indices of the ``k`` test images of test image ``index``'s class nearest to it in feature
    space, itself excluded."""
    same = torch.nonzero(labels == labels[index]).flatten()
    same = same[same != index]
    distance = (features[same] - features[index]).norm(dim=1)
    return same[distance.argsort()[:k]].cpu()
