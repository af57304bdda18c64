"""Detection by trigger inversion: find, for each class, a small mask and pattern that send clean
images to that class.

- ``neural_cleanse`` (Wang et al., 2019): a backdoored class needs a much smaller trigger than the
  others. The score is the anomaly index of the smallest mask: its distance below the median of the
  classes' mask norms, in units of their median absolute deviation (× 1.4826); above 2 is the
  paper's threshold for "backdoored".
- ``neural_cleanse_additive``: Neural Cleanse as the "Pick your Poison" group's code detects it
  (``neural_cleanse_detection.py``): an additive full-image trigger per class, penalized by its
  L1 norm; the score is the smallest trigger's norm, negated (higher is more suspicious).
- ``calibrated_trigger_inversion`` ("Pick your Poison", as its authors' code computes it,
  :class:`CalibratedTriggerInversion`): each class's additive trigger must flip the suspect
  model to that class while a copy repaired by Pivotal Tuning keeps the true labels; a backdoor
  is exactly such a trigger, while a universal adversarial pattern of a clean model fools both
  copies. The score is the largest gap, over classes, between the suspect's and the repaired
  copy's rate of predicting the class on test images the inversion never saw.

Neural Cleanse's trigger is ``x' = (1 - m) x + m p`` with a per-pixel mask ``m`` and a pattern
``p``, both through a sigmoid, optimized with Adam; ``l1`` weighs the mask's mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from raypoison.core.host_copy import host_to_device
from raypoison.data.augment import random_crop_flip
from raypoison.defenses.base import Defense, TrustedSet, frozen_copy
from raypoison.defenses.registry import DEFENSES
from raypoison.defenses.tuning import PivotalTuning
from raypoison.errors import ConfigError
from raypoison.models import ImageClassifier


@dataclass(frozen=True)
class InversionParams:
    steps: int = 100
    lr: float = 0.1
    l1: float = 1.0
    batch_size: int = 64

    def validate(self, path: str) -> None:
        if self.steps < 1 or self.lr <= 0 or self.l1 < 0 or self.batch_size < 1:
            raise ConfigError(path, "steps and batch_size must be ≥ 1, lr > 0, l1 ≥ 0")


@dataclass
class InvertedTrigger:
    mask: torch.Tensor  # [1, 1, H, W] in [0, 1]
    pattern: torch.Tensor  # [1, C, H, W] in [0, 1]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.mask) * x + self.mask * self.pattern


def invert(suspect: ImageClassifier, images: torch.Tensor, target: int, params: InversionParams,
           seed: int, *, keep: ImageClassifier | None = None,
           labels: torch.Tensor | None = None) -> InvertedTrigger:
    """A trigger that sends ``images`` (float in [0, 1]) to class ``target`` under ``suspect``;
    with ``keep``, one that also leaves ``keep``'s predictions at ``labels``."""
    generator = torch.Generator().manual_seed(seed)
    shape = images.shape[-2:]
    device = images.device
    mask_logit = torch.full((1, 1, *shape), -2.0, device=device, requires_grad=True)
    pattern_logit = (torch.randn((1, images.shape[1], *shape), generator=generator) * 0.1
                     ).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([mask_logit, pattern_logit], lr=params.lr)
    goal = torch.full((len(images),), target, dtype=torch.long, device=device)
    for _ in range(params.steps):
        idx = host_to_device(torch.randint(len(images), (min(params.batch_size, len(images)),),
                                           generator=generator), device)
        trigger = InvertedTrigger(torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit))
        x = trigger.apply(images[idx])
        loss = F.cross_entropy(suspect(x), goal[idx]) + params.l1 * trigger.mask.mean()
        if keep is not None:
            assert labels is not None  # keep comes with the labels it keeps
            loss = loss + F.cross_entropy(keep(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return InvertedTrigger(torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit))


@torch.no_grad()
def hit_rate(model: ImageClassifier, images: torch.Tensor, trigger: InvertedTrigger,
             target: int) -> float:
    return float((model(trigger.apply(images)).argmax(1) == target).float().mean())


def anomaly_index(norms: torch.Tensor) -> float:
    """How far the smallest norm lies below the median, in robust standard deviations."""
    median = norms.median()
    mad = (norms - median).abs().median() * 1.4826
    return float((median - norms.min()) / mad.clamp_min(1e-12))


@DEFENSES.register("neural_cleanse")
class NeuralCleanse(Defense):
    Params = InversionParams

    def detect(self, model: ImageClassifier, trusted: TrustedSet, seed: int) -> float:
        suspect = frozen_copy(model)
        images = trusted.images.float() / 255
        norms = []
        for c in range(suspect.head.out_features):
            others = images[trusted.labels != c]
            trigger = invert(suspect, others, c, self.params, seed + c)
            norms.append(trigger.mask.sum())
        return anomaly_index(torch.stack(norms))


@DEFENSES.register("neural_cleanse_additive")
class NeuralCleanseAdditive(Defense):
    """Neural Cleanse as the "Pick your Poison" group's code detects it
    (``Ben-Schneider-code/Universal-Backdoor-Attacks``, ``neural_cleanse_detection.py``). For each
    class c, an additive full-image trigger ``delta`` (from U[-init_scale/2, init_scale/2)) is
    optimized with Adam on the trusted images of the other classes, unaugmented but for the whole
    batch flipped with probability ½ (``augment: flip``), minimizing CE(model(x'), c) + ``l1`` ×
    the L1 norm of ``x' - x`` summed over the batch, where ``x' = clamp(x + delta, 0, 1)``. The
    score is the smallest L1 norm of a class's ``delta``, negated so that higher is more
    suspicious (theirs returns the norm). Their early stop when test accuracy falls below a floor
    is left out: it needs the test set and does not change the trigger's model, which is frozen."""

    @dataclass(frozen=True)
    class Params:
        steps: int = 50  # per class
        lr: float = 0.01
        betas: tuple[float, float] = (0.5, 0.9)
        init_scale: float = 0.01
        l1: float = 1e-4
        batch_size: int = 128
        augment: Literal["flip", "none"] = "flip"

        def validate(self, path: str) -> None:
            if self.steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.l1 < 0:
                raise ConfigError(path, "steps and batch_size must be ≥ 1, lr > 0, l1 ≥ 0")
            if self.init_scale < 0:
                raise ConfigError(f"{path}.init_scale", f"must be ≥ 0, got {self.init_scale}")

    def detect(self, model: ImageClassifier, trusted: TrustedSet, seed: int) -> float:
        suspect = frozen_copy(model)
        images = trusted.images.float() / 255
        norms = [float(invert_additive(suspect, images[trusted.labels != c], c, self.params,
                                       seed + c).delta.abs().sum())
                 for c in range(suspect.head.out_features)]
        return -min(norms)


def invert_additive(suspect: ImageClassifier, images: torch.Tensor, target: int,
                    p: NeuralCleanseAdditive.Params, seed: int) -> AdditiveTrigger:
    """:class:`NeuralCleanseAdditive`'s inversion for class ``target`` on ``images`` (float in
    [0, 1], class ``target`` already removed)."""
    generator = torch.Generator().manual_seed(seed)
    start = (torch.rand((1, *images.shape[1:]), generator=generator) - 0.5) * p.init_scale
    goal = torch.full((len(images),), target, dtype=torch.long, device=images.device)

    def loss(stamped: torch.Tensor, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(suspect(stamped), goal[idx]) + p.l1 * (stamped - x).abs().sum()

    return _fit_additive(images, start, loss, p, p.augment, generator)


@dataclass(frozen=True)
class AdditiveTrigger:
    """A full-image additive trigger: ``clamp(x + delta, 0, 1)`` (delta itself unbounded)."""

    delta: torch.Tensor  # [1, C, H, W]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.delta).clamp(0, 1)


def _batches(n: int, batch_size: int, generator: torch.Generator,
             device: torch.device) -> Iterator[torch.Tensor]:
    """Indices of ``batch_size`` samples of ``n``, pass after shuffled pass (the last batch of a
    pass smaller), as the authors' infinite loader gives them; each pass's order is drawn from
    ``generator`` when the pass begins."""
    while True:
        order = torch.randperm(n, generator=generator)
        for position in range(0, n, batch_size):
            yield host_to_device(order[position:position + batch_size], device)


def invert_calibrated(suspect: ImageClassifier, repaired: ImageClassifier, images: torch.Tensor,
                      labels: torch.Tensor, target: int, p: CalibratedTriggerInversion.Params,
                      seed: int) -> AdditiveTrigger:
    """The authors' inversion for class ``target``: ``delta`` starts uniform in
    [0, ``init_scale``), Adam (lr 0.01, betas 0.5, 0.9) for ``steps`` batches of ``images``
    (float in [0, 1], class ``target`` already removed; shuffled passes, the last batch of a pass
    smaller), minimizing CE(suspect(x'), target) + ``keep_weight`` × CE(repaired(x'), labels),
    both models in eval mode. ``augment``: ``reference`` crops (4-pixel padding) and flips each
    image, as their loader does, then flips the whole batch with probability 0.5 (their explicit
    transform); ``flip`` only the latter; ``none``."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.rand((1, *images.shape[1:]), generator=generator) * p.init_scale
    goal = torch.full((len(images),), target, dtype=torch.long, device=images.device)

    def loss(stamped: torch.Tensor, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(suspect(stamped), goal[idx])
                + p.keep_weight * F.cross_entropy(repaired(stamped), labels[idx]))

    return _fit_additive(images, start, loss, p, p.augment, generator)


def _fit_additive(images: torch.Tensor, start: torch.Tensor,
                  loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                  p: CalibratedTriggerInversion.Params | NeuralCleanseAdditive.Params,
                  augment: str, generator: torch.Generator) -> AdditiveTrigger:
    """The authors' additive-trigger loop, shared by CTI and their Neural Cleanse: ``delta`` from
    ``start``, Adam (``p.lr``, ``p.betas``) for ``p.steps`` batches of ``images`` (shuffled passes,
    :func:`_batches`), each batch cropped and flipped per image (``augment: reference``) and then
    flipped whole with probability ½ (unless ``none``), minimizing ``loss(clamp(x + delta, 0, 1),
    x, batch indices)``; the draws come from ``generator`` in that order."""
    device = images.device
    delta = start.to(device).requires_grad_(True)
    beta1, beta2 = p.betas
    optimizer = torch.optim.Adam([delta], lr=p.lr, betas=(beta1, beta2))
    batches = _batches(len(images), p.batch_size, generator, device)
    for _ in range(p.steps):
        idx = next(batches)
        x = images[idx]
        if augment == "reference":
            x = random_crop_flip(x, generator)
        if augment != "none" and torch.rand((), generator=generator) < 0.5:
            x = x.flip(-1)
        value = loss((x + delta).clamp(0, 1), x, idx)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    return AdditiveTrigger(delta.detach())


@torch.no_grad()
def batched_hit_rate(model: ImageClassifier, images: torch.Tensor,
                     trigger: InvertedTrigger | AdditiveTrigger, target: int,
                     batch_size: int = 512) -> float:
    """The share of ``images`` (uint8) that ``model`` sends to ``target`` once triggered."""
    hits = torch.zeros((), dtype=torch.long, device=images.device)  # read once, at the end
    for i in range(0, len(images), batch_size):
        x = trigger.apply(images[i:i + batch_size].float().div_(255))
        hits += (model(x).argmax(1) == target).sum()
    return int(hits) / max(1, len(images))


def scoring_split(trusted: TrustedSet, score_on: str, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which trusted images the inversion may fit on (a mask) and the images and labels it is
    scored on, which it never sees: the test images (``test``), or a seeded half of the
    trusted set, the other half fitting (``trusted_half``)."""
    fit = torch.ones(len(trusted), dtype=torch.bool, device=trusted.images.device)
    if score_on == "trusted_half":
        fit[torch.randperm(len(trusted), generator=torch.Generator().manual_seed(seed))[
            len(trusted) // 2:].to(fit.device)] = False
        return fit, trusted.images[~fit], trusted.labels[~fit]
    if trusted.test_images is None or trusted.test_labels is None:
        raise ValueError("score_on: test needs test images beside the trusted set")
    return fit, trusted.test_images, trusted.test_labels


@DEFENSES.register("calibrated_trigger_inversion")
class CalibratedTriggerInversion(Defense):
    """The detector of "Pick your Poison" as its authors' code computes it
    (``calibrated_trigger_inversion.py``). The suspect model is copied, and a calibration copy is
    repaired by Pivotal Tuning on the trusted set (its own defaults). For each class c, an
    additive full-image trigger is optimized (:func:`invert_calibrated`) on the trusted images
    of the other classes to send the suspect to c while the repaired copy keeps the true
    labels; it is then scored on images the inversion never saw, the test images outside c:
    the suspect's rate of predicting c minus the repaired copy's. The score is the largest of
    these over classes; higher is more suspicious (the authors return its negative).

    Named variants: ``trigger: mask`` is this project's earlier detector (a sigmoid mask and
    pattern with ``inversion``'s optimizer, fit on half of the trusted images and scored on the
    other half, ``score_on: trusted_half``); ``score_on: trusted_half`` also works with the
    additive trigger, for a defender who holds no test images."""

    @dataclass(frozen=True)
    class Params:
        trigger: Literal["additive", "mask"] = "additive"
        steps: int = 50  # per class
        lr: float = 0.01
        betas: tuple[float, float] = (0.5, 0.9)
        init_scale: float = 0.01
        keep_weight: float = 0.5
        batch_size: int = 128
        augment: Literal["reference", "flip", "none"] = "reference"
        score_on: Literal["test", "trusted_half"] = "test"
        inversion: InversionParams = InversionParams(steps=50)  # the mask trigger's optimizer
        repair: PivotalTuning.Params = field(default_factory=PivotalTuning.Params)

        def validate(self, path: str) -> None:
            if self.steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.keep_weight < 0:
                raise ConfigError(path, "steps and batch_size must be ≥ 1, lr > 0, "
                                        "keep_weight ≥ 0")
            if self.trigger == "mask" and self.score_on == "test":
                raise ConfigError(f"{path}.score_on", "the mask trigger is the earlier variant, "
                                  "scored on half of the trusted set: use trusted_half")

    def detect(self, model: ImageClassifier, trusted: TrustedSet, seed: int) -> float:
        p = self.params
        suspect = frozen_copy(model)
        repaired = frozen_copy(PivotalTuning(p.repair).repair(model, trusted, seed))
        images = trusted.images.float() / 255
        fit, scoring_x, scoring_y = scoring_split(trusted, p.score_on, seed)
        gaps = []
        for c in range(suspect.head.out_features):
            train_mask = fit & (trusted.labels != c)
            trigger: InvertedTrigger | AdditiveTrigger
            if p.trigger == "mask":
                trigger = invert(suspect, images[train_mask], c, p.inversion, seed + c,
                                 keep=repaired, labels=trusted.labels[train_mask])
            else:
                trigger = invert_calibrated(suspect, repaired, images[train_mask],
                                            trusted.labels[train_mask], c, p, seed + c)
            held = scoring_x[scoring_y != c]
            gaps.append(batched_hit_rate(suspect, held, trigger, c)
                        - batched_hit_rate(repaired, held, trigger, c))
        return max(gaps)
