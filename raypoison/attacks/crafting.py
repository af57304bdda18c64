"""The one crafting loop: projected optimization of a batch of images inside an L∞ ε ball.

An attack supplies the starting images and a per-image objective; the loop owns iteration, the
step rule, projection onto the ε ball around each anchor (its base image) and onto [0, 1], early
stopping, and quantization to the uint8 images that are stored and trained on. Per-image step
sizes keep every image's path independent of the others in its batch, so crafting several trials
in one batch gives what crafting them one by one gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Objective = Callable[[torch.Tensor], torch.Tensor]  # images [B, C, H, W] -> losses [B]


def eps_pixels(epsilon: float) -> int:
    """ε in uint8 steps: the largest whole pixel change inside the ball."""
    return math.floor(epsilon * 255 + 1e-6)


def project(x: torch.Tensor, anchor: torch.Tensor, epsilon: float) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, anchor - epsilon), anchor + epsilon).clamp_(0, 1)


def quantize(x: torch.Tensor, anchor_u8: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Round to uint8 and stay inside the ε ball after rounding."""
    bound = eps_pixels(epsilon)
    q = (x * 255).round()
    anchor = anchor_u8.to(q.dtype)
    return torch.minimum(torch.maximum(q, anchor - bound), anchor + bound).clamp_(0, 255).to(
        torch.uint8
    )


@dataclass
class CraftOutcome:
    images: torch.Tensor  # float in [0, 1], inside the ball
    iterations: int
    loss_initial: torch.Tensor  # per image
    loss_final: torch.Tensor


def descend(
    objective: Objective,
    start: torch.Tensor,
    anchor: torch.Tensor,
    epsilon: float,
    *,
    iterations: int,
    step: float,
    decay: float,
    min_step: float = 1e-12,
) -> CraftOutcome:
    """Projected gradient descent with Feature Collision's adaptive rule.

    Each image takes a plain gradient step; a step that would raise its loss is refused and that
    image's step size is multiplied by ``decay``. Stops early once every step size is negligible.
    """
    x = project(start.detach().clone(), anchor, epsilon)
    steps = torch.full((len(x),), step, device=x.device)
    with torch.no_grad():
        loss = objective(x)
    initial = loss.detach().clone()
    done = 0
    for done in range(1, iterations + 1):  # noqa: B007  (the count is part of the outcome)
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x).sum(), x)
        x = x.detach()
        with torch.no_grad():
            candidate = project(x - steps.view(-1, 1, 1, 1) * grad, anchor, epsilon)
            candidate_loss = objective(candidate)
            worse = candidate_loss > loss
            steps = torch.where(worse, steps * decay, steps)
            x = torch.where(worse.view(-1, 1, 1, 1), x, candidate)
            loss = torch.where(worse, loss, candidate_loss)
        if bool((steps < min_step).all()):
            break
    return CraftOutcome(x.detach(), done, initial, loss.detach())


def adam_descend(
    objective: Objective,
    start: torch.Tensor,
    anchor: torch.Tensor,
    epsilon: float,
    *,
    iterations: int,
    lr: float,
    signed: bool = False,
) -> CraftOutcome:
    """Projected Adam on the images themselves (pixel units in [0, 1]); ``signed`` feeds Adam the
    sign of the gradient (signed Adam). The objective returns one loss per independent group of
    images (a trial's poisons); their sum is minimized, so groups never influence each other."""
    x = project(start.detach().clone(), anchor, epsilon).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    initial = objective(x).detach().clone()  # with autograd on: some objectives need it
    for _ in range(iterations):
        loss = objective(x)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        if signed:
            x.grad.sign_()
        optimizer.step()
        with torch.no_grad():
            x.copy_(project(x, anchor, epsilon))
    final = objective(x).detach()
    return CraftOutcome(x.detach(), iterations, initial, final)


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` onto the probability simplex."""
    k = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    cumulative = u.cumsum(-1) - 1
    steps = torch.arange(1, k + 1, device=v.device, dtype=v.dtype)
    rho = ((u - cumulative / steps) > 0).sum(-1, keepdim=True)
    theta = cumulative.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0)


def scheduled_descend(
    objective: Objective,
    start: torch.Tensor,
    anchor: torch.Tensor,
    epsilon: float,
    *,
    iterations: int,
    lr: float,
    decay: float,
    decay_every: int,
    stop_below: float | None = None,
) -> CraftOutcome:
    """Projected plain gradient descent on the summed loss, the step size multiplied by ``decay``
    every ``decay_every`` iterations; stops once the summed loss falls below ``stop_below``."""
    x = project(start.detach().clone(), anchor, epsilon)
    with torch.no_grad():
        initial = objective(x)
    loss, done = initial, 0
    for done in range(1, iterations + 1):  # noqa: B007  (the count is part of the outcome)
        step = lr * decay ** ((done - 1) // decay_every)
        x.requires_grad_(True)
        loss = objective(x)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            x = project(x.detach() - step * grad, anchor, epsilon)
        if stop_below is not None and float(loss.detach().sum()) < stop_below:
            break
    with torch.no_grad():
        final = objective(x)
    return CraftOutcome(x.detach(), done, initial.detach(), final.detach())
