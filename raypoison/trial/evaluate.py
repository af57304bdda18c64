"""Poison checks before any training, and the evaluation of a trained victim."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raypoison.attacks.base import Poisons
from raypoison.attacks.crafting import eps_pixels
from raypoison.data import ImageData
from raypoison.data.setups import Setup
from raypoison.data.triggers import Trigger, paste
from raypoison.models import ImageClassifier
from raypoison.training.loop import TrainingDiverged, logits, predict


@dataclass(frozen=True)
class PoisonCheck:
    valid: bool
    reason: str  # "ok" or what is wrong
    linf: float | None  # largest pixel change, as a fraction of 255


def check_poisons(poisons: Poisons, setup: Setup, data: ImageData, epsilon: float,
                  budget: int, *, relabels: bool = False,
                  pool: np.ndarray | None = None, rounding_slack: int = 0) -> PoisonCheck:
    """Count, labels, indices, target, dtype and shape, and ε measured on the stored uint8 images.

    ``budget`` is the count the attack owes. Clean-label poisons (the benchmark's) must replace
    the setup's bases, keep the base class and stay within ε. Relabelled poisons (``relabels``,
    the dirty-label backdoors) must come from distinct images of ``pool`` (the victim's training
    set without an attack) outside the base class, all labelled the base class; ε does not bind
    them, and ``linf`` still reports how far they moved.
    """
    images = poisons.images

    def fail(reason: str, linf: float | None = None) -> PoisonCheck:
        return PoisonCheck(False, reason, linf)

    if len(poisons.base_indices) != budget or len(images) != budget:
        return fail(f"count: {len(images)} poisons for {len(poisons.base_indices)} indices, "
                    f"the budget is {budget}")
    if images.dtype != torch.uint8:
        return fail(f"dtype: poisons must be stored as uint8, got {images.dtype}")
    if budget and tuple(images.shape[1:]) != data.image_shape:
        return fail(f"shape: poisons are {tuple(images.shape[1:])}, images are {data.image_shape}")
    wrong = [lbl for lbl in poisons.labels if lbl != setup.base_class]
    if len(poisons.labels) != budget or wrong:
        verb = "be relabelled as" if relabels else "keep"
        return fail(f"labels: every poison must {verb} the base class {setup.base_class}, "
                    f"found {sorted(set(poisons.labels))}")
    if poisons.target_index != setup.target_index:
        return fail(f"target: poisons were made for target {poisons.target_index}, "
                    f"the setup's is {setup.target_index}")
    if poisons.target_image is not None and not torch.equal(
            poisons.target_image.cpu(), data.test_x[setup.target_index].cpu()):
        return fail(f"target: the poisons' target image is not test image {setup.target_index}")
    if relabels:
        return _check_sources(poisons, setup, data, pool)
    if tuple(poisons.base_indices) != tuple(setup.base_indices):
        return fail("indices: the poisons' base indices differ from the setup's")
    bases = data.train_x[list(setup.base_indices)].to(images.device)
    change = int((images.int() - bases.int()).abs().max().item())
    linf = change / 255
    bound = eps_pixels(epsilon)
    if change > bound + rounding_slack:
        slack = f" plus {rounding_slack} step of rounding" if rounding_slack else ""
        return fail(f"epsilon: a pixel moved by {change}/255, the bound is "
                    f"{bound}/255{slack}", linf)
    if change > bound:
        return PoisonCheck(True, f"ok: a pixel moved by {change}/255, within ε = {bound}/255 plus "
                           f"{change - bound} step of the reference's PIL rounding", linf)
    return PoisonCheck(True, "ok", linf)


def _check_sources(poisons: Poisons, setup: Setup, data: ImageData,
                   pool: np.ndarray | None) -> PoisonCheck:
    indices = np.asarray(poisons.base_indices, dtype=np.int64)
    if len(np.unique(indices)) != len(indices):
        return PoisonCheck(False, "indices: a source image is poisoned twice", None)
    if pool is not None and not np.isin(indices, pool).all():
        outside = indices[~np.isin(indices, pool)][:5].tolist()
        return PoisonCheck(False, f"indices: sources {outside} are not in the victim's training "
                                  "set", None)
    if not len(indices):
        return PoisonCheck(True, "ok", 0.0)
    labels = data.train_y[torch.as_tensor(indices, device=data.train_y.device)].cpu().numpy()
    if (labels == setup.base_class).any():
        return PoisonCheck(False, f"indices: sources must come from classes other than the "
                                  f"target class {setup.base_class}", None)
    sources = data.train_x[indices.tolist()].to(poisons.images.device)
    linf = int((poisons.images.int() - sources.int()).abs().max().item()) / 255
    return PoisonCheck(True, "ok", linf)


@dataclass(frozen=True)
class VictimOutcome:
    target_pred: int
    success: bool
    clean_accuracy: float
    attack_success_rate: float | None = None  # backdoors: triggered target-class test images
    # the target's base-class logit minus its largest other logit: > 0 exactly when it succeeds
    target_margin: float | None = None


def base_margin(logits: torch.Tensor, base_class: int) -> float:
    """``logits[base_class]`` minus the largest other logit of one image's ``logits``."""
    others = torch.cat([logits[:base_class], logits[base_class + 1:]])
    return float(logits[base_class] - others.max())


def poisons_fit(model: ImageClassifier, poisons: Poisons) -> float | None:
    """Share of the poisons a trained victim puts in their own label, on the stored images.

    It explains feature-space attacks: a linear head's logits at the poisons' mean feature are
    the mean of their logits, so a Bullseye Polytope whose poisons' mean collides with the
    target flips the target roughly when the head fits the poisons, and cannot when it fits none.
    """
    if len(poisons.images) == 0:
        return None
    labels = torch.as_tensor(np.asarray(poisons.labels, dtype=np.int64))
    preds = predict(model, poisons.images.to(next(model.parameters()).device)).cpu()
    return float((preds == labels).float().mean())


def asr_members(data: ImageData, setup: Setup, scope: str) -> torch.Tensor:
    """The test images an attack success rate counts: the target class's (``target_class``, as
    the benchmark's backdoors are measured), every class but the base class, the poisons' label
    (``other_classes``, as "Pick your Poison" defines the rate), or every test image
    (``every_class``, as that paper's authors' code counts it: images of the poisons' label
    predicted as their own class count as successes, about clean accuracy / classes more)."""
    if scope == "target_class":
        return torch.nonzero(data.test_y == setup.target_class).flatten()
    if scope == "every_class":
        return torch.arange(len(data.test_y))
    return torch.nonzero(data.test_y != setup.base_class).flatten()


def evaluate_victim(model: ImageClassifier, data: ImageData, setup: Setup, *,
                    test_features: torch.Tensor | None = None, trigger: Trigger | None = None,
                    triggered_features: torch.Tensor | None = None,
                    asr_scope: str = "target_class") -> VictimOutcome:
    """Success: the target image (with the trigger pasted, for backdoors) is classified as the
    base class, the poisons' label. For backdoors, the attack success rate is the fraction of
    the triggered test images of :func:`asr_members` classified as the base class.

    ``test_features`` and ``triggered_features`` are features under a frozen extractor (transfer
    mode): then only the head runs, and the predictions are the same as running the whole model.
    """
    test_logits = _head_or_model(model, test_features, data.test_x)
    if not bool(torch.isfinite(test_logits).all()):  # argmax of NaN is class 0: rows would lie
        raise TrainingDiverged("the model's outputs on the test set are NaN or infinite: its "
                               "training diverged (or its weights are broken)")
    preds = test_logits.argmax(1)
    clean = float((preds == data.test_y).float().mean())
    asr = None
    if trigger is None:
        target_logits = test_logits[setup.target_index]
    else:
        members = asr_members(data, setup, asr_scope)
        triggered_logits = _head_or_model(
            model, triggered_features,
            paste(data.test_x[members], trigger) if triggered_features is None else None)
        triggered = triggered_logits.argmax(1)
        asr = float((triggered == setup.base_class).float().mean())
        target_logits = triggered_logits[int((members == setup.target_index).nonzero()[0, 0])]
    # prediction and margin from one logit vector, so they agree even at near-ties
    pred = int(target_logits.argmax())
    return VictimOutcome(pred, pred == setup.base_class, clean, asr,
                         base_margin(target_logits, setup.base_class))


def _head_or_model(model: ImageClassifier, features: torch.Tensor | None,
                   images: torch.Tensor | None) -> torch.Tensor:
    """Logits from banked ``features`` through the head alone, else from running ``images``."""
    if features is None:
        assert images is not None
        return logits(model, images)
    with torch.no_grad():
        return model.head(features)
