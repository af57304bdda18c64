"""What an attack may ask of the trial it crafts for, and a context to call attacks without one.

Attacks see :class:`CraftingContext`, a protocol, not the worker's whole trial context: the data,
the frozen models they craft on, the threat model's numbers (ε, patch size), the trial's clean
training set, and a way to build a fresh trainable model. The worker's
:class:`raypoison.trial.context.TrialContext` satisfies it; :class:`StandaloneContext` does too,
from a few tensors and models, so that an attack runs in a notebook the way ART's attacks do::

    ctx = StandaloneContext(data, {"victim": model}, epsilon=8 / 255)
    result = create_attack("feature_collision", {"iterations": 50}).craft(ctx, setup, seed=0, index=0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from raypoison.data.base import ImageData
from raypoison.data.setups import Setup
from raypoison.models.base import ImageClassifier
from raypoison.training.recipe import RecipeConfig


class CraftingContext(Protocol):
    """The attack's view of a trial (see the module docstring)."""

    data: ImageData
    device: str

    @property
    def epsilon(self) -> float:
        """The ℓ∞ bound on a poison's change of its base, in [0, 1] pixel units."""
        ...

    @property
    def patch_size(self) -> int:
        """The side of a patch trigger, in pixels."""
        ...

    @property
    def attackers(self) -> tuple[str, ...]:
        """The models the attacks craft on (one, or an ensemble)."""
        ...

    @property
    def dataset_name(self) -> str:
        """The data set's registry name (some reference schedules depend on it)."""
        ...

    @property
    def seed(self) -> int:
        """The root of the seeds derived for per-trial models."""
        ...

    @property
    def training_recipe(self) -> RecipeConfig:
        """The recipe the victims train with."""
        ...

    @property
    def train_labels(self) -> np.ndarray:
        """The training labels as a numpy array (for index arithmetic)."""
        ...

    def model(self, name: str) -> ImageClassifier:
        """The frozen model ``name`` in eval mode; do not train it."""
        ...

    def fresh_victim(self, name: str, seed: int) -> ImageClassifier:
        """A trainable model of ``name``'s kind, initialized from ``seed``."""
        ...

    def training_pool(self, setup: Setup, index: int) -> np.ndarray:
        """The training images trial ``index``'s victims train on without an attack."""
        ...


@dataclass
class StandaloneContext:
    """A :class:`CraftingContext` from plain objects: data, frozen models by name, and ε.

    The trial's clean training set is the whole training set. ``build_model(name, seed)`` makes a
    fresh trainable model; without it, attacks that train one (Witches' Brew's ``fresh_model``)
    fail with a message saying so.
    """

    data: ImageData
    models: Mapping[str, ImageClassifier]
    epsilon: float = 8 / 255
    patch_size: int = 5
    attackers: tuple[str, ...] = ()
    dataset_name: str = "custom"
    seed: int = 0
    training_recipe: RecipeConfig = field(default_factory=RecipeConfig)
    device: str = "cpu"
    build_model: Callable[[str, int], ImageClassifier] | None = None

    def __post_init__(self) -> None:
        if not self.attackers:
            self.attackers = tuple(self.models)
        missing = [name for name in self.attackers if name not in self.models]
        if missing:
            raise KeyError(f"attackers {missing} are not among the models {sorted(self.models)}")
        for model in self.models.values():
            model.eval()
            for q in model.parameters():
                q.requires_grad_(False)

    @property
    def train_labels(self) -> np.ndarray:
        return self.data.train_y.cpu().numpy()

    def model(self, name: str) -> ImageClassifier:
        return self.models[name]

    def fresh_victim(self, name: str, seed: int) -> ImageClassifier:
        if self.build_model is None:
            raise ValueError("this StandaloneContext cannot make a fresh model: pass "
                             "build_model=(name, seed) -> model")
        return self.build_model(name, seed)

    def training_pool(self, setup: Setup, index: int) -> np.ndarray:
        return np.arange(len(self.data.train_y))
