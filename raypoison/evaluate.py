"""Poison checks before any training, and the evaluation of a trained victim."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raypoison.attacks.base import Poisons
from raypoison.attacks.crafting import eps_pixels
from raypoison.data import ImageData
from raypoison.models import ImageClassifier
from raypoison.setups import Setup
from raypoison.training import predict
from raypoison.triggers import Trigger, paste


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
    attack_success_rate: float | None = None  # backdoors: triggered target-class test images


def evaluate_victim(model: ImageClassifier, data: ImageData, setup: Setup, *,
                    test_features: torch.Tensor | None = None, trigger: Trigger | None = None,
                    triggered_features: torch.Tensor | None = None) -> VictimOutcome:
    """Success: the target image (with the trigger pasted, for backdoors) is classified as the
    base class, the poisons' label. For backdoors, the attack success rate is the fraction of
    the target class's test images, trigger pasted, classified as the base class.

    ``test_features`` and ``triggered_features`` are features under a frozen extractor (transfer
    mode): then only the head runs, and the predictions are the same as running the whole model.
    """
    with torch.no_grad():
        if test_features is not None:
            preds = model.head(test_features).argmax(1)
        else:
            preds = predict(model, data.test_x)
    clean = float((preds == data.test_y).float().mean())
    if trigger is None:
        pred = int(preds[setup.target_index])
        return VictimOutcome(pred, pred == setup.base_class, clean)
    members = torch.nonzero(data.test_y == setup.target_class).flatten()
    with torch.no_grad():
        if triggered_features is not None:
            triggered = model.head(triggered_features).argmax(1)
        else:
            triggered = predict(model, paste(data.test_x[members], trigger))
    pred = int(triggered[int((members == setup.target_index).nonzero()[0, 0])])
    asr = float((triggered == setup.base_class).float().mean())
    return VictimOutcome(pred, pred == setup.base_class, clean, asr)
