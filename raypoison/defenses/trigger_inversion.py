"""Detection by trigger inversion: find, for each class, a small mask and pattern that send clean
images to that class.

- ``neural_cleanse`` (Wang et al., 2019): a backdoored class needs a much smaller trigger than the
  others. The score is the anomaly index of the smallest mask: its distance below the median of the
  classes' mask norms, in units of their median absolute deviation (× 1.4826); above 2 is the
  paper's threshold for "backdoored".
- ``calibrated_trigger_inversion`` ("Pick your Poison", as PROTOCOL.md §2 infers it): each class's
  trigger must flip the suspect model to that class while a copy repaired by Pivotal Tuning keeps
  the true labels; a backdoor is exactly such a trigger, while a universal adversarial pattern of a
  clean model fools both copies. Triggers are optimized on half of the trusted images of the other
  classes and measured on the other half; the score is the largest gap, over classes, between the
  suspect's and the repaired copy's rate of predicting the class.

A trigger is ``x' = (1 - m) x + m p`` with a per-pixel mask ``m`` and a pattern ``p``, both through
a sigmoid, optimized with Adam; ``l1`` weighs the mask's mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

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
        idx = torch.randint(len(images), (min(params.batch_size, len(images)),),
                            generator=generator).to(device)
        trigger = InvertedTrigger(torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit))
        x = trigger.apply(images[idx])
        loss = F.cross_entropy(suspect(x), goal[idx]) + params.l1 * trigger.mask.mean()
        if keep is not None:
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

    def detect(self, model, trusted: TrustedSet, seed: int) -> float:
        suspect = frozen_copy(model)
        images = trusted.images.float() / 255
        norms = []
        for c in range(suspect.head.out_features):
            others = images[trusted.labels != c]
            trigger = invert(suspect, others, c, self.params, seed + c)
            norms.append(trigger.mask.sum())
        return anomaly_index(torch.stack(norms))


@DEFENSES.register("calibrated_trigger_inversion")
class CalibratedTriggerInversion(Defense):
    @dataclass(frozen=True)
    class Params:
        inversion: InversionParams = InversionParams(steps=50)
        repair: PivotalTuning.Params = field(default_factory=PivotalTuning.Params)

    def detect(self, model, trusted: TrustedSet, seed: int) -> float:
        suspect = frozen_copy(model)
        repaired = frozen_copy(PivotalTuning(self.params.repair).repair(model, trusted, seed))
        images = trusted.images.float() / 255
        half = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        half[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[
            : len(images) // 2].to(images.device)] = True
        gaps = []
        for c in range(suspect.head.out_features):
            other = trusted.labels != c
            fit, held = other & half, other & ~half
            trigger = invert(suspect, images[fit], c, self.params.inversion, seed + c,
                             keep=repaired, labels=trusted.labels[fit])
            gaps.append(hit_rate(suspect, images[held], trigger, c)
                        - hit_rate(repaired, images[held], trigger, c))
        return max(gaps)
