"""The whole life of one trial, in plain PyTorch: setup, craft, check, train victims, evaluate.

:func:`run_trial` has no Ray in it: it runs the same in a test, a notebook and a worker actor.
Every outcome is rows, one per victim; an error becomes rows with ``status="failed"`` that name the
phase and carry the message, so one broken trial never stops a run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from raypoison.attacks import Poisons, create_attack
from raypoison.config import ScenarioConfig
from raypoison.data import ImageData, load_dataset
from raypoison.evaluate import check_poisons, evaluate_victim
from raypoison.feature_bank import TrainingFeatures, view_features
from raypoison.models import ImageClassifier, build_model, load_checkpoint
from raypoison.rows import (
    STATUS_FAILED,
    STATUS_OK,
    STATUS_REJECTED,
    describe_error,
    now,
    per_victim,
    trial_fields,
)
from raypoison.setups import Setup, clean_training_indices, load_setups, sample_setup
from raypoison.spec import TrialSpec, derive_seed
from raypoison.training import train

VIEWS = 162  # crop offsets (9 x 9) x flips, for the protocol's 4-pixel padding
MAX_BANK_BYTES = 4 * 2**30  # a larger bank would not fit beside the models on a shared GPU


class TrialContext:
    """What the trials of one scenario share: the data set on the device and the pretrained models.

    A worker builds it once per scenario. Models are loaded on first use; callers get frozen shared
    copies (:meth:`model`) or fresh trainable ones (:meth:`fresh_victim`).
    """

    def __init__(self, scenario: ScenarioConfig, data: ImageData,
                 checkpoints: Mapping[str, bytes | str | Path], device: str = "cpu"):
        self.scenario = scenario
        self.device = device
        self.data = data.to(device)
        self.train_labels = data.train_y.cpu().numpy()
        self.test_labels = data.test_y.cpu().numpy()
        self._checkpoints = dict(checkpoints)
        self._models: dict[str, ImageClassifier] = {}
        self._setups = load_setups(scenario.setups) if scenario.setups else None
        self._banks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._test_features: dict[str, torch.Tensor] = {}

    @classmethod
    def create(cls, scenario: ScenarioConfig, checkpoints: Mapping[str, bytes | str | Path],
               device: str = "cpu") -> TrialContext:
        return cls(scenario, load_dataset(scenario.dataset), checkpoints, device)

    def model(self, name: str) -> ImageClassifier:
        """The pretrained model ``name``, frozen and in eval mode; do not train it."""
        if name not in self._models:
            if name not in self._checkpoints:
                raise KeyError(f"no checkpoint was given for model {name!r}")
            model, _meta = load_checkpoint(
                self._checkpoints[name], where=f"model {name!r}", arch=self.scenario.models[name].arch,
                mean=self.data.mean, std=self.data.std, image_size=self.data.image_shape[1],
                params=self.scenario.models[name].params)
            expected = self.scenario.models[name].arch
            if model.name != expected:
                raise ValueError(f"model {name!r}: checkpoint holds {model.name}, "
                                 f"the scenario says {expected}")
            model = model.to(self.device).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._models[name] = model
        return self._models[name]

    def fresh_victim(self, name: str, seed: int) -> ImageClassifier:
        """The victim ``name`` ready to train: in transfer and fine-tune modes a copy of the
        pretrained model with a new head for this data set's classes; from scratch, a new network
        initialized from ``seed``."""
        if self.scenario.mode == "scratch":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                cfg = self.scenario.models[name]
                return build_model(cfg.arch, self.data.num_classes, self.data.mean,
                                   self.data.std, self.data.image_shape[1], cfg.params
                                   ).to(self.device)
        model = copy.deepcopy(self.model(name))
        if model.head.out_features != self.data.num_classes:
            model.head = torch.nn.Linear(model.feature_dim, self.data.num_classes).to(self.device)
        model.reset_head(seed)
        trainable = model.parameters() if self.scenario.mode == "finetune" else model.head.parameters()
        for p in trainable:
            p.requires_grad_(True)
        return model

    @property
    def uses_feature_bank(self) -> bool:
        """Transfer trials on a fixed-size training set train heads on banked features."""
        s = self.scenario
        if s.mode != "transfer" or s.train_per_class is None:
            return False
        pool = (s.train_per_class + s.budget) * self.data.num_classes
        widest = max(self.model(v).feature_dim for v in s.victims)
        return VIEWS * pool * widest * 4 <= MAX_BANK_BYTES

    def feature_pool(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Victim ``name``'s bank over the pool of clean images every trial draws from (the first
        ``train_per_class + budget`` of each class), and the pool row of each training index."""
        if name not in self._banks:
            s = self.scenario
            per_class = s.train_per_class + s.budget
            pool = np.sort(np.concatenate([np.flatnonzero(self.train_labels == c)[:per_class]
                                           for c in np.unique(self.train_labels)]))
            row_of = torch.full((len(self.train_labels),), -1, dtype=torch.long)
            row_of[torch.as_tensor(pool)] = torch.arange(len(pool))
            bank = view_features(self.model(name), self.data.train_x[torch.as_tensor(pool)])
            self._banks[name] = (bank, row_of.to(self.device))
        return self._banks[name]

    def test_features(self, name: str) -> torch.Tensor | None:
        """Features of the test set under victim ``name``'s frozen extractor (transfer mode only)."""
        if self.scenario.mode != "transfer":
            return None
        if name not in self._test_features:
            model = self.model(name)
            with torch.no_grad():
                self._test_features[name] = torch.cat([
                    model.features(self.data.test_x[i:i + 1024].float().div_(255))
                    for i in range(0, len(self.data.test_x), 1024)])
        return self._test_features[name]

    def setup(self, index: int) -> Setup:
        """Trial ``index``'s setup: from the scenario's setups file, or the seeded sampler."""
        if self._setups is None:
            return sample_setup(self.train_labels, self.test_labels, budget=self.scenario.budget,
                                seed=self.scenario.seed, index=index)
        setup = self._setups[index]
        exact = self.data.test_exact if self.data.test_exact is not None else len(self.test_labels)
        if not 0 <= setup.target_index < exact:
            raise ValueError(
                f"target index {setup.target_index} cannot be resolved: this copy of the data set "
                f"has the first {exact} test images in their original order")
        if self.test_labels[setup.target_index] != setup.target_class:
            raise ValueError(f"test image {setup.target_index} is not of the setup's target "
                             f"class {setup.target_class}: is the test set in its original order?")
        wrong = [i for i in setup.base_indices if self.train_labels[i] != setup.base_class]
        if wrong:
            raise ValueError(f"base indices {wrong[:5]} are not of the base class "
                             f"{setup.base_class}: is the training set in its original order?")
        return setup


PoisonSink = Callable[[TrialSpec, Setup, Poisons, ImageData], None]


def run_trial(spec: TrialSpec, ctx: TrialContext, save_poisons: PoisonSink | None = None
              ) -> list[dict]:
    """Run one trial and return its rows (one per victim).

    ``save_poisons``, if given, receives the poisons once they pass the checks (the execution
    layer uses it to export them in the reference trial-folder format).
    """
    scenario = spec.scenario
    started, clock = now(), time.perf_counter()
    common = trial_fields(spec)
    common.update(started_at=started, device=str(ctx.device), torch_version=torch.__version__)
    phase = "setup"
    try:
        setup = ctx.setup(spec.index)
        common.update(target_class=setup.target_class, target_index=setup.target_index,
                      base_class=setup.base_class, base_indices=list(setup.base_indices),
                      seconds_setup=time.perf_counter() - clock)
        phase = "craft"
        attack = create_attack(spec.attack)
        seed_craft = derive_seed(scenario.seed, spec.index, spec.attack.label, "craft")
        tick = time.perf_counter()
        crafted = attack.craft(ctx, setup, seed_craft, spec.index)
        common.update(seed_craft=seed_craft, seconds_craft=time.perf_counter() - tick,
                      attack_iterations=crafted.iterations,
                      attack_loss_initial=crafted.loss_initial,
                      attack_loss_final=crafted.loss_final)
        if crafted.poisons is None:
            return _finish(spec, common, clock, STATUS_OK)
        phase = "check"
        tick = time.perf_counter()
        check = check_poisons(crafted.poisons, setup, ctx.data, scenario.epsilon, scenario.budget)
        common.update(poisons_valid=check.valid, poison_check=check.reason,
                      poison_linf=check.linf, seconds_check=time.perf_counter() - tick)
        if not check.valid:
            return _finish(spec, common, clock, STATUS_REJECTED, error=f"check: {check.reason}")
        if save_poisons is not None:
            phase = "save"
            save_poisons(spec, setup, crafted.poisons, ctx.data)
        phase = "train"
        per = _train_and_evaluate(spec, ctx, setup, crafted.poisons)
        return _finish(spec, common, clock, STATUS_OK, per)
    except Exception as err:  # a trial's error is data, not a crash of the run
        return _finish(spec, common, clock, STATUS_FAILED, error=describe_error(err, phase))


def _train_and_evaluate(spec, ctx, setup, poisons) -> dict[str, dict]:
    scenario, data = spec.scenario, ctx.data
    clean = torch.as_tensor(
        clean_training_indices(ctx.train_labels, setup, scenario.train_per_class), device=ctx.device
    )
    images = torch.cat([data.train_x[clean], poisons.images.to(ctx.device)])
    labels = torch.cat([data.train_y[clean],
                        torch.as_tensor(np.asarray(poisons.labels), device=ctx.device)])
    per = {}
    banked = ctx.uses_feature_bank
    for victim in scenario.victims:
        seed_train = derive_seed(scenario.seed, spec.index, victim, "train")
        model = ctx.fresh_victim(victim, seed_train)
        features = None
        if banked:
            pool, row_of = ctx.feature_pool(victim)
            extra = view_features(ctx.model(victim), poisons.images.to(ctx.device))
            features = TrainingFeatures(pool, row_of[clean], extra)
        fit = train(model, images, labels, recipe=scenario.training_recipe, seed=seed_train,
                    trainable="head" if scenario.mode == "transfer" else "all",
                    features=features)
        tick = time.perf_counter()
        outcome = evaluate_victim(model, data, setup, ctx.test_features(victim))
        per[victim] = {
            "seed_train": seed_train, "seconds_train": fit.seconds,
            "seconds_eval": time.perf_counter() - tick, "success": outcome.success,
            "target_pred": outcome.target_pred, "clean_accuracy": outcome.clean_accuracy,
        }
    return per


def _finish(spec, common, clock, status, per=None, error=None) -> list[dict]:
    common.update(status=status, error=error, finished_at=now(),
                  seconds_total=time.perf_counter() - clock)
    return per_victim(spec, common, per if status == STATUS_OK else None)
