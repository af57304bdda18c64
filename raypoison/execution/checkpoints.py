"""The models a run needs, ready before any trial: read from checkpoint files, or pre-trained
once per model as Ray tasks and cached under ``<output>/models/`` so a resumed run reuses them.

Workers receive checkpoints as object references, so they need no shared file system.

A checkpoint file enters trial ids by its content, but a pre-trained model enters them by its
recipe only: the weights are not known when the ids are made. A run on another machine, whose
output lacks the cached ``models/`` file, pre-trains again, and a CPU pre-training is not
promised to repeat bit for bit across builds and machines. So every run records the SHA-256 of
the weights it used in its manifest (``models``), and warns when a cached model's digest
differs from the one an earlier run of the same output recorded (the rows would then come from
two sets of weights; the report says so too).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import ray

from raypoison.config.suite import ModelConfig, ScenarioConfig
from raypoison.core.identity import pretrained_key
from raypoison.core.registry import Component
from raypoison.errors import DataError
from raypoison.execution.datasets import SharedDatasets, project_errors
from raypoison.execution.devices import assigned_device
from raypoison.models import load_checkpoint, params_mismatch
from raypoison.store.storage import Location

log = logging.getLogger("raypoison")


def pretrain_task(model_cfg: ModelConfig, dataset: Component,
                  arrays: dict[str, Any] | None = None) -> bytes:
    """Pre-train on ``arrays`` (the data set decoded once, from the object store) or, without
    them, on the data set decoded here."""
    import torch

    from raypoison.data import ImageData
    from raypoison.trial.pretrain import pretrain_checkpoint

    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources()
                                     .get("CPU", 1))))
    device = assigned_device()
    data = ImageData.from_arrays(arrays) if arrays is not None else None
    return pretrain_checkpoint(model_cfg, dataset, device, data)


def models_of(scenario: ScenarioConfig) -> list[str]:
    """The models with weights a scenario's trials may load: the attacker, the victims (but for
    scratch victims, which start from seeds) and any other model an attack crafts on."""
    return [name for name, cfg in scenario.models.items() if cfg.has_weights]


def pretrained_name(cfg: ModelConfig, scenario: ScenarioConfig) -> str:
    """File name of a pre-trained model in a run's ``models/`` cache: arch plus a hash of what
    defines it (architecture parameters, pre-training recipe and seed, the data set it pre-trains
    on), so scenarios that differ only in their victims' data share it."""
    assert cfg.pretrain is not None  # a cached model is a pre-trained one
    key = pretrained_key(cfg.arch, cfg.params, cfg.pretrain,
                         cfg.pretrain.dataset_for(scenario.dataset))
    return f"{cfg.arch}-{key}.pt"


def local_checkpoint(cfg: ModelConfig, scenario: ScenarioConfig,
                     models_dir: str | Path | None) -> Path | None:
    """The file holding model ``cfg``'s weights on this machine: its checkpoint file, or its
    pre-trained copy in ``models_dir`` (a run's ``models/`` cache); None if neither exists."""
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    if models_dir and cfg.pretrain:
        cached = Path(models_dir, pretrained_name(cfg, scenario))
        if cached.is_file():
            return cached
    return None


def check_checkpoint_files(scenarios: list[ScenarioConfig]) -> None:
    """Load every checkpoint file a scenario names, so a bad file stops the run before it starts."""
    for scenario in scenarios:
        for name in models_of(scenario):
            cfg = scenario.models[name]
            if cfg.checkpoint is not None:
                model, _ = load_checkpoint(  # normalization is irrelevant to this check
                    Path(cfg.checkpoint),
                    where=f"scenario {scenario.name}, model {name}: {cfg.checkpoint}",
                    arch=cfg.arch, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), params=cfg.params,
                )
                if model.name != cfg.arch:
                    raise DataError(f"scenario {scenario.name}, model {name}: {cfg.checkpoint} "
                                    f"holds a {model.name}, the config says {cfg.arch}")
                mismatch = params_mismatch(model, cfg.params)
                if mismatch is not None:
                    raise DataError(f"scenario {scenario.name}, model {name}: {cfg.checkpoint} "
                                    f"{mismatch} (models.{name}.params)")


@dataclasses.dataclass(frozen=True)
class Weights:
    """Which weights a run gave one model of one scenario (a manifest's ``models`` entry)."""

    scenario: str
    model: str
    arch: str
    source: str  # "checkpoint" (a file the config names), "cached" (models/) or "pretrained"
    file: str  # the checkpoint's path, or the cached file's name under models/
    sha256: str


@dataclasses.dataclass
class Prepared:
    refs: dict[str, dict[str, ray.ObjectRef]]  # per scenario and model name: checkpoint bytes
    weights: list[Weights]


def prepare_checkpoints(scenarios: list[ScenarioConfig], location: Location, *, num_cpus: float,
                        num_gpus: float, datasets: SharedDatasets | None = None) -> Prepared:
    """Object refs of checkpoint bytes, per scenario and model name, and the digest of each. A
    model to pre-train gets its data set from ``datasets`` (decoded once for the run) where
    given."""
    refs: dict[str, ray.ObjectRef] = {}
    digests: dict[str, str] = {}
    to_cache: dict[str, str] = {}
    task = ray.remote(pretrain_task).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=2)
    out: dict[str, dict[str, ray.ObjectRef]] = {}
    used: list[tuple[str, str, str, str, str]] = []  # scenario, model, arch, source, key
    for scenario in scenarios:
        out[scenario.name] = {}
        for name in models_of(scenario):
            cfg = scenario.models[name]
            if cfg.checkpoint is not None:
                key, source = f"file:{cfg.checkpoint}", "checkpoint"
                if key not in refs:
                    blob = Path(cfg.checkpoint).read_bytes()
                    refs[key], digests[key] = ray.put(blob), sha256(blob)
            else:
                key = pretrained_name(cfg, scenario)
                path = location.join("models", key)
                if key not in refs:
                    if location.exists(path):
                        blob = location.read_bytes(path)
                        _check_cached(blob, path)
                        refs[key], digests[key] = ray.put(blob), sha256(blob)
                    else:
                        log.info("pre-training %s (%s) for scenario %s", name, cfg.arch,
                                 scenario.name)
                        assert cfg.pretrain is not None  # no checkpoint: models_of keeps it
                        dataset = cfg.pretrain.dataset_for(scenario.dataset)
                        arrays = datasets.ref(dataset) if datasets is not None else None
                        refs[key] = task.remote(cfg, dataset, arrays)
                        to_cache[key] = path
                source = "pretrained" if key in to_cache else "cached"
            out[scenario.name][name] = refs[key]
            used.append((scenario.name, name, cfg.arch, source, key))
    for key, path in to_cache.items():
        with project_errors():
            blob = ray.get(refs[key])
        _model, meta = load_checkpoint(blob, where=path)
        log.info("pre-trained %s: clean test accuracy %.3f", path.rsplit("/", 1)[-1],
                 meta.get("clean_accuracy", float("nan")))
        location.write_bytes(path, blob)
        digests[key] = sha256(blob)
    weights = [Weights(s, m, arch, source, key.removeprefix("file:"), digests[key])
               for s, m, arch, source, key in used]
    return Prepared(out, weights)


def _check_cached(blob: bytes, path: str) -> None:
    """Load a cached pre-trained model once in the driver: a truncated or foreign file would
    otherwise fail every trial (after its digest was recorded as the run's weights)."""
    try:
        load_checkpoint(blob, where=path)
    except (DataError, KeyError, TypeError, ValueError) as err:
        what = str(err) if isinstance(err, DataError) else (
            f"{path}: not a raypoison checkpoint ({type(err).__name__}: {err})")
        raise DataError(f"{what}. This is the run's cached pre-trained model: restore it from "
                        "where the output came from, or delete it to pre-train it again (the "
                        "new weights will differ from those the output's rows used; the report "
                        "then says the rows come from two sets of weights)") from None


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()
