"""Poison checks before any training, and the evaluation of a trained victim."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raypoison.attacks.base import Poisons
from raypoison.attacks.crafting import eps_pixels
from raypoison.data import ImageData
from raypoison.models import ImageClassifier
from raypoison.setups import Setup
from raypoison.training import accuracy, predict


@dataclass(frozen=True)
class PoisonCheck:
    valid: bool
    reason: str  # "ok" or what is wrong
    linf: float | None  # largest pixel change, as a fraction of 255


def check_poisons(poisons: Poisons, setup: Setup, data: ImageData, epsilon: float,
                  budget: int) -> PoisonCheck:
    """Count, labels, indices, target, dtype and shape, and ε measured on the stored uint8 images."""
    images = poisons.images

    def fail(reason: str, linf: float | None = None) -> PoisonCheck:
        return PoisonCheck(False, reason, linf)

    if len(poisons.base_indices) != budget or len(images) != budget:
        return fail(f"count: {len(images)} poisons for {len(poisons.base_indices)} indices, "
                    f"the budget is {budget}")
    if images.dtype != torch.uint8:
        return fail(f"dtype: poisons must be stored as uint8, got {images.dtype}")
    if tuple(images.shape[1:]) != data.image_shape:
        return fail(f"shape: poisons are {tuple(images.shape[1:])}, images are {data.image_shape}")
    if tuple(poisons.base_indices) != tuple(setup.base_indices):
        return fail("indices: the poisons' base indices differ from the setup's")
    wrong = [lbl for lbl in poisons.labels if lbl != setup.base_class]
    if len(poisons.labels) != budget or wrong:
        return fail(f"labels: every poison must keep the base class {setup.base_class}, "
                    f"found {sorted(set(poisons.labels))}")
    if poisons.target_index != setup.target_index:
        return fail(f"target: poisons were made for target {poisons.target_index}, "
                    f"the setup's is {setup.target_index}")
    if poisons.target_image is not None and not torch.equal(
            poisons.target_image.cpu(), data.test_x[setup.target_index].cpu()):
        return fail(f"target: the poisons' target image is not test image {setup.target_index}")
    bases = data.train_x[list(setup.base_indices)].to(images.device)
    change = int((images.int() - bases.int()).abs().max().item())
    linf = change / 255
    if change > eps_pixels(epsilon):
        return fail(f"epsilon: a pixel moved by {change}/255, the bound is "
                    f"{eps_pixels(epsilon)}/255", linf)
    return PoisonCheck(True, "ok", linf)


@dataclass(frozen=True)
class VictimOutcome:
    target_pred: int
    success: bool
    clean_accuracy: float


def evaluate_victim(model: ImageClassifier, data: ImageData, setup: Setup,
                    test_features: torch.Tensor | None = None) -> VictimOutcome:
    """Success: the target image is classified as the base class (the poisons' label).

    ``test_features``: the test set's features under a frozen extractor (transfer mode), so that
    only the head runs; the predictions are the same as running the whole model.
    """
    if test_features is not None:
        with torch.no_grad():
            preds = model.head(test_features).argmax(1)
        pred = int(preds[setup.target_index])
        clean = float((preds == data.test_y).float().mean())
        return VictimOutcome(pred, pred == setup.base_class, clean)
    target = data.test_x[setup.target_index : setup.target_index + 1]
    pred = int(predict(model, target)[0])
    return VictimOutcome(pred, pred == setup.base_class, accuracy(model, data.test_x, data.test_y))
