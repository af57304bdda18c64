"""The context the trials of one scenario share in a worker: the data set on the device, the
pretrained models (loaded on first use), feature banks, the trusted set and the setups.

It is the :class:`raypoison.attacks.context.CraftingContext` that attacks craft against.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from raypoison.config.suite import ScenarioConfig
from raypoison.core.gpu_memory import bank_limit
from raypoison.core.identity import derive_seed
from raypoison.data import ImageData, load_dataset
from raypoison.data.augment import identity_view
from raypoison.data.setups import Setup, clean_training_indices, load_setups, sample_setup
from raypoison.data.triggers import Trigger, paste
from raypoison.defenses import TrustedSet
from raypoison.models import (
    ImageClassifier,
    build_model,
    load_checkpoint,
    params_mismatch,
    to_device,
)
from raypoison.training.feature_bank import TrainingFeatures, view_features
from raypoison.training.recipe import RecipeConfig, uses_bf16
from raypoison.trial.evaluate import asr_members

VIEWS = 162  # crop offsets (9 x 9) x flips, for the protocol's 4-pixel padding


def _device_bytes(device: str) -> int | None:
    """The memory of a CUDA ``device``; None on the CPU."""
    if not device.startswith("cuda"):
        return None
    return torch.cuda.get_device_properties(torch.device(device)).total_memory


class TrialContext:
    """What the trials of one scenario share: the data set on the device and the pretrained models.

    A worker builds it once per scenario. Models are loaded on first use; callers get frozen shared
    copies (:meth:`model`) or fresh trainable ones (:meth:`fresh_victim`).
    """

    def __init__(self, scenario: ScenarioConfig, data: ImageData,
                 checkpoints: Mapping[str, bytes | str | Path], device: str = "cpu",
                 bank_bytes: int | None = None):
        self.scenario = scenario
        self.device = device
        # what this scenario's feature banks may take together (core.gpu_memory.bank_limit)
        self.bank_bytes = bank_limit(device, None, _device_bytes(device)) \
            if bank_bytes is None else bank_bytes
        self.data = data.to(device)
        self.train_labels = data.train_y.cpu().numpy()
        self.test_labels = data.test_y.cpu().numpy()
        self._checkpoints = dict(checkpoints)
        self._models: dict[str, ImageClassifier] = {}
        self._setups = load_setups(scenario.setups) if scenario.setups else None
        self._banks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._test_features: dict[str, torch.Tensor] = {}
        self._triggered: dict[tuple, torch.Tensor] = {}
        self._held_out: np.ndarray | None = None

    @classmethod
    def create(cls, scenario: ScenarioConfig, checkpoints: Mapping[str, bytes | str | Path],
               device: str = "cpu", bank_bytes: int | None = None) -> TrialContext:
        return cls(scenario, load_dataset(scenario.dataset), checkpoints, device, bank_bytes)

    # what attacks see of the scenario (raypoison.attacks.context.CraftingContext)
    @property
    def epsilon(self) -> float:
        return self.scenario.epsilon

    @property
    def patch_size(self) -> int:
        return self.scenario.patch_size

    @property
    def attackers(self) -> tuple[str, ...]:
        return self.scenario.attackers

    @property
    def dataset_name(self) -> str:
        return self.scenario.dataset.name

    @property
    def seed(self) -> int:
        return self.scenario.seed

    @property
    def training_recipe(self) -> RecipeConfig:
        return self.scenario.training_recipe

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
            mismatch = params_mismatch(model, self.scenario.models[name].params)
            if mismatch is not None:  # checked before a run; here for a context made directly
                raise ValueError(f"model {name!r}: checkpoint {mismatch} "
                                 f"(scenario {self.scenario.name}, models.{name}.params)")
            model = to_device(model, self.device).eval()
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
                return to_device(build_model(cfg.arch, self.data.num_classes, self.data.mean,
                                             self.data.std, self.data.image_shape[1],
                                             cfg.params), self.device)
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
        """Transfer trials on a fixed-size training set train heads on banked features, when
        the banks of every victim together (float32, every view of the pool; a trial trains all
        its victims, and each keeps its bank) fit in :attr:`bank_bytes`."""
        s = self.scenario
        if s.mode != "transfer" or s.train_per_class is None or s.train_subset != "first":
            return False  # a bank covers the fixed pool of first images only
        pool = (s.train_per_class + s.budget) * self.data.num_classes
        features = sum(self.model(v).feature_dim for v in s.victims)
        views = VIEWS if self.bank_views is None else len(self.bank_views)
        return views * pool * features * 4 <= self.bank_bytes

    @property
    def bank_views(self) -> list[int] | None:
        """The views a victim's head trains on: None (all 162) with augmentation, else only the
        image as it is."""
        return None if self.scenario.training_recipe.augment else [identity_view()]

    @property
    def bank_bf16(self) -> bool:
        """Whether the victims' training features come from bf16 autocast (the recipe's
        ``precision``); test features are evaluation and stay float32."""
        return uses_bf16(self.scenario.training_recipe.precision, self.device)

    def feature_pool(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Victim ``name``'s bank over the pool of clean images every trial draws from (the first
        ``train_per_class + budget`` of each class), and the pool row of each training index."""
        if name not in self._banks:
            s = self.scenario
            assert s.train_per_class is not None  # uses_feature_bank says so
            per_class = s.train_per_class + s.budget
            pool = np.sort(np.concatenate([np.flatnonzero(self.train_labels == c)[:per_class]
                                           for c in np.unique(self.train_labels)]))
            row_of = torch.full((len(self.train_labels),), -1, dtype=torch.long)
            row_of[torch.as_tensor(pool)] = torch.arange(len(pool))
            bank = view_features(self.model(name), self.data.train_x[torch.as_tensor(pool)],
                                 views=self.bank_views, bf16=self.bank_bf16)
            self._banks[name] = (bank, row_of.to(self.device))
        return self._banks[name]

    def training_features(self, name: str, clean: torch.Tensor, poisons: torch.Tensor
                          ) -> TrainingFeatures | None:
        """Banked features of a victim's training set (``clean`` indices, then ``poisons``), or
        None when a clean image lies outside the bank's pool (a dirty-label trial keeps bases
        that may lie anywhere in their class): then the trial runs the extractor."""
        bank, row_of = self.feature_pool(name)
        rows = row_of[clean]
        if not bool((rows >= 0).all()):
            return None
        return TrainingFeatures(bank, rows, self.model(name), poisons.to(self.device),
                                pool_views=self.bank_views, bf16=self.bank_bf16)

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

    def triggered_features(self, name: str, setup: Setup, trigger: Trigger
                           ) -> torch.Tensor | None:
        """Features of the test images an attack success rate counts (:func:`asr_members`), with
        ``trigger`` applied, under victim ``name``'s frozen extractor (transfer mode only);
        cached per image set and trigger."""
        if self.scenario.mode != "transfer":
            return None
        scope = self.scenario.asr_scope
        which = {"target_class": setup.target_class, "other_classes": setup.base_class}.get(scope)
        key = (name, scope, which, trigger.description)
        if key not in self._triggered:
            images = paste(self.data.test_x[asr_members(self.data, setup, scope)], trigger)
            with torch.no_grad():
                self._triggered[key] = torch.cat([
                    self.model(name).features(images[i:i + 1024].float().div_(255))
                    for i in range(0, len(images), 1024)])
        return self._triggered[key]

    def held_out(self) -> np.ndarray:
        """The trusted set's training indices: the last ``trusted_per_class`` of each class (or
        the ``trusted`` share of the training set, split evenly), in data set order (empty
        without one). No victim ever trains on them."""
        if self._held_out is None:
            classes = np.unique(self.train_labels)
            n = self.scenario.trusted_count(len(self.train_labels), len(classes))
            parts = [np.flatnonzero(self.train_labels == c)[-n:] if n else np.empty(0, np.int64)
                     for c in classes]
            self._held_out = np.sort(np.concatenate(parts)).astype(np.int64)
        return self._held_out

    def trusted_indices(self, trained_on: np.ndarray, index: int) -> np.ndarray:
        """Trial ``index``'s trusted set as training indices, in data set order. ``held_out``:
        :meth:`held_out`. ``training`` (the authors' sampling in "Pick your Poison"): as many
        images, drawn uniformly at random without replacement, seeded by the scenario seed and
        the trial, from ``trained_on``, the victims' clean training images (poisons and the images
        they replace are never among them)."""
        held_out = self.held_out()
        if self.scenario.trusted_from == "held_out":
            return held_out
        pool = np.asarray(trained_on, dtype=np.int64)
        if len(held_out) > len(pool):
            raise ValueError(f"a trusted set of {len(held_out)} images cannot be drawn from "
                             f"{len(pool)} clean training images")
        rng = np.random.default_rng(derive_seed(self.scenario.seed, index, "trusted"))
        return np.sort(rng.choice(pool, size=len(held_out), replace=False))

    def trusted_set(self, trained_on: np.ndarray | None = None, index: int = 0) -> TrustedSet:
        """The defenders' trusted set (:meth:`trusted_indices`; ``trained_on`` is needed when
        the scenario draws it from the training images)."""
        if self.scenario.trusted_from != "held_out" and trained_on is None:
            raise ValueError("this scenario draws its trusted set from the victims' training "
                             "images: pass them")
        chosen = self.held_out() if trained_on is None else self.trusted_indices(trained_on,
                                                                                 index)
        at = torch.as_tensor(chosen, device=self.device)
        return TrustedSet(self.data.train_x[at], self.data.train_y[at],
                          test_images=self.data.test_x, test_labels=self.data.test_y)

    def training_pool(self, setup: Setup, index: int) -> np.ndarray:
        """The images trial ``index``'s victims train on without an attack, in data set order:
        the clean images of :func:`clean_training_indices` and the setup's bases. Poisons replace
        members of it (the bases, or a dirty-label attack's sources)."""
        s = self.scenario
        subset_seed = (derive_seed(s.seed, index, "subset")
                       if s.train_subset == "random" else None)
        clean = clean_training_indices(self.train_labels, setup, s.train_per_class,
                                       random_seed=subset_seed, held_out=self.held_out())
        return np.sort(np.concatenate([clean, np.asarray(setup.base_indices, dtype=np.int64)]))

    def setup(self, index: int) -> Setup:
        """Trial ``index``'s setup: from the scenario's setups file, or the seeded sampler."""
        if self._setups is None:
            return sample_setup(self.train_labels, self.test_labels, budget=self.scenario.budget,
                                seed=self.scenario.seed, index=index, exclude=self.held_out())
        setup = self._setups[index]
        outside = [i for i in setup.base_indices if i >= len(self.train_labels)]
        if outside:
            raise ValueError(f"{self.scenario.setups}[{index}]: base indices {outside[:5]} lie "
                             f"outside the training set ({len(self.train_labels)} images)")
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
        trusted = np.intersect1d(setup.base_indices, self.held_out())
        if len(trusted):
            raise ValueError(f"base indices {trusted[:5].tolist()} are in the trusted set; "
                             "lower trusted_per_class (or trusted)")
        return setup
