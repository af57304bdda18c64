"""Untargeted L∞ PGD: the attack of adversarial training (Madry et al.) and of the clean-label
backdoor's first step. Random start inside the ball, signed gradient ascent on the cross-entropy,
projection onto the ball and onto [0, 1] after every step."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raypoison.core.host_copy import host_to_device
from raypoison.models.base import ImageClassifier


def pgd(model: ImageClassifier, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, step: float,
        steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in ``[0, 1]`` within ``epsilon`` of ``x`` that raise ``model``'s loss on ``y``.

    The model's mode (train or eval) is left as the caller set it.
    """
    noise = host_to_device(torch.rand(x.shape, generator=generator), x.device) * 2 - 1
    adv = (x + epsilon * noise).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        with torch.no_grad():
            adv = adv + step * grad.sign()
            adv = torch.minimum(torch.maximum(adv, x - epsilon), x + epsilon).clamp(0, 1)
    return adv.detach()


def robust_accuracy(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor, *,
                    epsilon: float, step: float, steps: int, seed: int = 0,
                    batch_size: int = 256) -> float:
    """Accuracy under PGD on uint8 ``images`` (eval mode)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float() / 255
        y = labels[i:i + batch_size]
        adv = pgd(model, x, y, epsilon=epsilon, step=step, steps=steps, generator=generator)
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == y).sum())
    return correct / max(1, len(images))
