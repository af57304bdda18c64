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

# How often a loop with an early stop asks the device whether to stop. A read waits for every
# kernel queued before it, so a read every iteration keeps a GPU idle while the host queues the
# next; the stop itself is decided on the device every iteration and freezes what it stops, so
# reading late changes no result and costs at most this many iterations less one, computed and
# thrown away.
STOP_READ_EVERY = 20


def iterations_computed(ran: int, configured: int) -> int:
    """How many iterations a loop computed whose outcome says it ran ``ran`` of ``configured``:
    one that stopped early went on to the next read of its stop (:data:`STOP_READ_EVERY`).
    What crafting costs an iteration is its seconds over this count, not over ``ran``. For the
    loops that read their stop that way (:func:`descend_lagged`, :func:`scheduled_descend`);
    :func:`descend` (``step_rule: refuse``) still reads every iteration."""
    return min(configured, -(-ran // STOP_READ_EVERY) * STOP_READ_EVERY)


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
    loss_initial: torch.Tensor  # per image (or per group of images)
    loss_final: torch.Tensor
    # the loss each image's last iteration computed, before its last step (Witches' Brew picks
    # its restart by it); None where the loop does not keep it
    loss_last: torch.Tensor | None = None
    rose: torch.Tensor | None = None  # per image: whether its loss rose (Feature Collision)
    per_image_iterations: torch.Tensor | None = None


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
    """Projected gradient descent that refuses a rise (Feature Collision's ``step_rule: refuse``).

    Each image takes a plain gradient step from its projected start; a step that would raise its
    loss is refused and that image's step size is multiplied by ``decay``. Stops early once every
    step size is negligible.
    """
    x = project(start.detach().clone(), anchor, epsilon)
    steps = torch.full((len(x),), step, device=x.device)
    rose = torch.zeros(len(x), dtype=torch.bool, device=x.device)
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
            rose |= worse
            steps = torch.where(worse, steps * decay, steps)
            x = torch.where(worse.view(-1, 1, 1, 1), x, candidate)
            loss = torch.where(worse, loss, candidate_loss)
        if bool((steps < min_step).all()):
            break
    return CraftOutcome(x.detach(), done, initial, loss.detach(), rose=rose,
                        per_image_iterations=torch.full((len(x),), done, device=x.device))


def descend_lagged(
    objective: Objective,
    start: torch.Tensor,
    anchor: torch.Tensor,
    epsilon: float,
    *,
    iterations: int,
    step: float,
    decay: float,
    tolerance: float = 1e-5,
) -> CraftOutcome:
    """Feature Collision's step rule as the benchmark's crafting code runs it (``step_rule:
    reference``).

    Per image: the loss at the current point is compared with the last accepted loss (the first
    comparison is with +inf, so the first step is always taken, from the unprojected ``start``).
    If it did not rise, the image moves to the projected gradient step and stops once that move
    changes it by less than ``tolerance`` relative to its norm (the move is still made). If it
    rose, the step size is multiplied by ``decay`` and the image stays where it is, the point
    whose loss rose. Since that point's loss stays above the last accepted one, an image never
    moves again after its first rise: the rule stops there, at the worse point, and the loop
    skips the remaining iterations that would only shrink its step, from its next read of
    the stop (every :data:`STOP_READ_EVERY` iterations) on.
    """
    x = start.detach().clone()
    n = len(x)
    steps = torch.full((n,), step, device=x.device)
    accepted = torch.full((n,), float("inf"), device=x.device)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    rose = torch.zeros(n, dtype=torch.bool, device=x.device)
    ran = torch.zeros(n, dtype=torch.long, device=x.device)
    with torch.no_grad():
        initial = objective(x)
    for i in range(iterations):
        # an inactive image changes nothing, so the host asks only every few iterations
        if i % STOP_READ_EVERY == 0 and not bool(active.any()):
            break
        x.requires_grad_(True)
        loss = objective(x)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        x, loss = x.detach(), loss.detach()
        with torch.no_grad():
            moved = project(x - steps.view(-1, 1, 1, 1) * grad, anchor, epsilon)
            up = active & (loss > accepted)
            take = active & ~up
            change = (x - moved).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)
            converged = take & (change < tolerance)
            x = torch.where(take.view(-1, 1, 1, 1), moved, x)
            accepted = torch.where(take, loss, accepted)
            steps = torch.where(up, steps * decay, steps)
            ran += active.long()
            rose |= up
            active &= ~(up | converged)
    with torch.no_grad():
        final = objective(x)
    return CraftOutcome(x.detach(), int(ran.max()) if n else 0, initial.detach(), final.detach(),
                        rose=rose, per_image_iterations=ran)


def milestone_lr(lr: float, iteration: int, milestones: tuple[int, ...], gamma: float) -> float:
    """``lr`` × ``gamma`` for every milestone at or before ``iteration`` (0-based): the step size
    of PyTorch's MultiStepLR stepped once per iteration, and of the polytope attacks' decay."""
    return lr * gamma ** sum(iteration >= m for m in milestones)


def adam_descend(
    objective: Objective,
    start: torch.Tensor,
    anchor: torch.Tensor,
    epsilon: float,
    *,
    iterations: int,
    lr: float,
    signed: bool = False,
    scale: torch.Tensor | None = None,
    milestones: tuple[int, ...] = (),
    gamma: float = 0.1,
    project_start: bool = True,
) -> CraftOutcome:
    """Projected Adam; ``signed`` feeds Adam the sign of the gradient (signed Adam). The objective
    returns one loss per independent group of images (a trial's poisons); their sum is minimized,
    so groups never influence each other.

    Adam steps on the perturbation divided by ``scale`` (per channel, ``[1, C, 1, 1]``): with the
    data set's std that is the perturbation of the normalized image ``(x − mean) / std``, which is
    the variable the benchmark's polytope code and Witches' Brew optimize, so ``lr`` means what it
    means there (a step of about ``lr × std`` in pixels). Without ``scale`` it steps on pixels.
    After every step the image is projected in pixel units: the perturbation onto the ε ball, then
    the image onto [0, 1]. The learning rate is multiplied by ``gamma`` at each of ``milestones``
    (0-based iterations). ``project_start`` False takes the first gradient at ``start`` as given
    (Witches' Brew projects first after its first step).
    """
    unit = torch.ones(1, device=start.device) if scale is None else scale.to(start.device)
    begin = project(start.detach().clone(), anchor, epsilon) if project_start else start.detach()
    delta = ((begin - anchor) / unit).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([delta], lr=lr)

    def image() -> torch.Tensor:
        return anchor + delta * unit

    initial = objective(image()).detach().clone()  # with autograd on: some objectives need it
    last = initial
    for i in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = milestone_lr(lr, i, milestones, gamma)
        loss = objective(image())
        last = loss.detach()
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        if signed:
            assert delta.grad is not None
            delta.grad.sign_()
        optimizer.step()
        with torch.no_grad():
            delta.copy_((project(image(), anchor, epsilon) - anchor) / unit)
    x = image().detach()
    final = objective(x).detach()
    return CraftOutcome(x, iterations, initial, final, loss_last=last)


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
    before_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> CraftOutcome:
    """Projected plain gradient descent on the summed loss, the step size multiplied by ``decay``
    every ``decay_every`` iterations; stops once the summed loss (computed before the step)
    falls below ``stop_below``, after taking that step. ``before_step(x, stopped)`` runs at the
    start of every iteration, before the loss (Hidden Trigger Backdoor re-pairs its goals
    there); the initial loss is the first iteration's.

    The stop is decided on the device: from the iteration whose loss fell below ``stop_below``
    on, a flag (``stopped``, a boolean scalar on the device) freezes the images, and
    ``before_step`` must leave its state alone where it is set; the host reads the flag every
    :data:`STOP_READ_EVERY` iterations, not every one, and the outcome is the one stopping at
    once gives (its iteration count included)."""
    x = project(start.detach().clone(), anchor, epsilon)
    initial = None
    stopped = torch.zeros((), dtype=torch.bool, device=x.device)
    ran = torch.full((), iterations, dtype=torch.long, device=x.device)
    done = 0
    for done in range(1, iterations + 1):  # noqa: B007  (the count is part of the outcome)
        step = lr * decay ** ((done - 1) // decay_every)
        if before_step is not None:
            before_step(x.detach(), stopped)
        x.requires_grad_(True)
        loss = objective(x)
        if initial is None:
            initial = loss.detach().clone()
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            moved = project(x.detach() - step * grad, anchor, epsilon)
            if stop_below is None:
                x = moved
                continue
            x = torch.where(stopped, x.detach(), moved)
            below = ~stopped & (loss.detach().sum().double() < stop_below)  # as float() compares
            ran = torch.where(below, done, ran)
            stopped = stopped | below
        if done % STOP_READ_EVERY == 0 and bool(stopped):
            break
    with torch.no_grad():
        final = objective(x)
    return CraftOutcome(x.detach(), int(ran) if stop_below is not None else done,
                        final.detach() if initial is None else initial, final.detach())
