"""The shape of a defense (after "Pick your Poison"): a defender holds a trained model and a small
trusted set of clean, labelled images, and may

- ``detect(model, trusted) -> score``: how suspicious the model is (higher: more likely poisoned);
- ``repair(model, trusted) -> model``: a repaired copy (the suspect model is never changed);
- ``flag(training_set, model) -> per-sample scores``: data-side, which training samples look
  poisoned (higher: more suspicious), with the defense's own decision of which to flag.

A defense implements what it does and leaves the rest returning None. It never sees which samples
are poisons nor the trigger: the trial uses those only to score the defense.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from raypoison.core.registry import NoParams
from raypoison.models import ImageClassifier


@dataclass
class TrustedSet:
    images: torch.Tensor  # uint8 [N, C, H, W], on the model's device
    labels: torch.Tensor  # int64 [N]
    # images the defender may predict on but never trains on: the test split, as the authors'
    # calibrated trigger inversion scores on it (None where a caller has none)
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TrainingSet:
    """What the victim trained on (its images and labels, poisons included and unmarked)."""

    images: torch.Tensor  # uint8
    labels: torch.Tensor


@dataclass
class Flags:
    scores: torch.Tensor  # float [N]: higher is more suspicious
    flagged: torch.Tensor  # bool [N]: the defense's decision


class Defense:
    name: ClassVar[str]

    Params: ClassVar[type[Any]] = NoParams  # each defense's frozen dataclass

    def __init__(self, params: Any):
        self.params = params

    @classmethod
    def scenario_problem(cls, params: Any, scenario: Any) -> str | None:
        """Why these parameters cannot defend ``scenario``'s victims, or None (checked when the
        config is read)."""
        return None

    def detect(self, model: ImageClassifier, trusted: TrustedSet, seed: int) -> float | None:
        return None

    def repair(self, model: ImageClassifier, trusted: TrustedSet, seed: int
               ) -> ImageClassifier | None:
        return None

    def flag(self, training: TrainingSet, model: ImageClassifier, trusted: TrustedSet,
             seed: int) -> Flags | None:
        return None


def trainable_copy(model: ImageClassifier) -> ImageClassifier:
    """A deep copy of ``model`` with every parameter trainable."""
    out = copy.deepcopy(model)
    for p in out.parameters():
        p.requires_grad_(True)
    return out


def frozen_copy(model: ImageClassifier) -> ImageClassifier:
    out = copy.deepcopy(model).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


@torch.no_grad()
def features_of(model: ImageClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features of uint8 images, in eval mode."""
    model.eval()
    return torch.cat([model.features(images[i:i + batch_size].float().div_(255))
                      for i in range(0, len(images), batch_size)])
