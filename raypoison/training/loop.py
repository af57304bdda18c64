"""The one training loop: pre-training, transfer (a fresh head on a frozen extractor) and,
later, fine-tuning and training from scratch all go through :func:`train`.

Randomness (shuffling and augmentation) comes from one seeded CPU generator, so a run is
reproducible on a given device and library build.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from raypoison.core.host_copy import host_to_device
from raypoison.data.augment import (
    apply_shift_flip,
    draw_crop_flip,
    draw_shift_flip,
    identity_view,
    random_crop_flip,
    view_index,
)
from raypoison.models.base import ImageClassifier
from raypoison.training.adversarial import pgd
from raypoison.training.precision import bf16_autocast
from raypoison.training.recipe import RecipeConfig, uses_bf16

if TYPE_CHECKING:
    from raypoison.training.feature_bank import TrainingFeatures

Trainable = Literal["head", "all"]
ExtraLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    epochs: int
    steps: int
    final_loss: float
    seconds: float


def _optimizer(params, recipe: RecipeConfig) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(
        params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )


def _schedule(optimizer: torch.optim.Optimizer, recipe: RecipeConfig,
              steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of ``recipe``: stepped per epoch ("step") or per batch
    ("onecycle", see :class:`~raypoison.training.recipe.RecipeConfig`)."""
    if recipe.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(recipe.milestones), gamma=recipe.gamma)
    total = recipe.epochs * steps_per_epoch
    warm = max(1, round(recipe.warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / (total - warm + 1))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(
    model: ImageClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    recipe: RecipeConfig,
    seed: int,
    trainable: Trainable = "all",
    features: TrainingFeatures | None = None,
    extra_loss: ExtraLoss | None = None,
    max_steps: int | None = None,
    unaugmented: torch.Tensor | None = None,
) -> TrainResult:
    """Train ``model`` in place on uint8 ``images`` (on the model's device) and int64 ``labels``.

    ``trainable="head"`` is the transfer setting: the extractor is frozen and its BatchNorm layers
    stay in eval mode; only the linear head learns. There, ``features`` (a bank of the frozen
    extractor's features under every augmentation view) replaces running the extractor: the same
    random draws pick the same views, so the head sees the same inputs either way.

    ``unaugmented`` (bool ``[N]``) marks samples trained on as stored even when the recipe
    augments: poisons whose one augmented view was drawn when they were made (the Pick your
    Poison code's patch backdoors, :mod:`raypoison.attacks.dirty_label`). The random draws are
    the same with or without it, so the other samples see the very same views.

    ``extra_loss(x, features, logits, labels)`` adds a term to the cross-entropy of each batch (the
    repairs of :mod:`raypoison.defenses` use it); ``max_steps`` ends training early.
    """
    if features is not None and trainable != "head":
        raise ValueError("precomputed features need a frozen extractor (trainable='head')")
    if features is not None and extra_loss is not None:
        raise ValueError("an extra loss needs the model run on the images, not banked features")
    if features is not None:
        _check_banks(recipe, [features])
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    half = uses_bf16(recipe.precision, images.device)
    on_cuda = images.device.type == "cuda"
    if half and on_cuda:
        model.to(memory_format=torch.channels_last)
    if trainable == "head":
        model.eval()
        for p in model.extractor.parameters():
            p.requires_grad_(False)
        params = list(model.head.parameters())
    else:
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, recipe)
    n, steps, loss_value = len(labels), 0, float("nan")
    per_step = recipe.schedule == "onecycle"
    schedule = _schedule(optimizer, recipe, steps_per_epoch=-(-n // recipe.batch_size))
    loss = torch.tensor(float("nan"))
    kept_on_host = unaugmented.cpu() if unaugmented is not None and features is not None else None
    for _ in range(recipe.epochs):
        order_on_host = torch.randperm(n, generator=generator)
        order = host_to_device(order_on_host, images.device)
        for start_i in range(0, n, recipe.batch_size):
            idx = order[start_i:start_i + recipe.batch_size]
            if features is not None:  # the bank's lookup takes the host's draws (no sync)
                idx_on_host = order_on_host[start_i:start_i + recipe.batch_size]
                views = _views(idx_on_host, generator, recipe.augment, kept_on_host)
                logits = model.head(features.lookup(idx_on_host, views))
            else:
                x = images[idx].float().div_(255)
                if recipe.augment:
                    x = _keep_unaugmented(_augmented(x, recipe, model, generator), x, idx,
                                          unaugmented)
                if recipe.adversarial is not None:
                    x = _adversarial_batch(model, x, labels[idx], recipe, generator, trainable)
                if half and on_cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with bf16_autocast(images.device, half):
                    feats = model.features(x)
                    logits = model.head(feats)
            with bf16_autocast(images.device, half):
                loss = F.cross_entropy(logits.float(), labels[idx])
                if extra_loss is not None:
                    loss = loss + extra_loss(x, feats, logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if per_step:
                schedule.step()
            steps += 1
            if steps % 20 == 0:
                loss_value = _finite(loss.item(), steps, recipe)
            if max_steps is not None and steps >= max_steps:
                break
        if not per_step:
            schedule.step()
        if max_steps is not None and steps >= max_steps:
            break
    loss_value = _finite(loss.item(), steps, recipe) if steps else loss_value
    if steps:  # the last update comes after the last loss read: the weights must be finite too
        _finite_weights(model.head if trainable == "head" else model, steps, recipe)
    model.eval()
    if half and on_cuda:
        model.to(memory_format=torch.contiguous_format)
    return TrainResult(recipe.epochs, steps, float(loss_value), time.perf_counter() - start)


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: the model's weights mean nothing from there on."""


def _finite(value: float, step: int, recipe: RecipeConfig) -> float:
    """``value``, the loss read every 20 steps (a read synchronises a GPU, so not every step);
    a NaN or infinite loss stops the training, so that no row reports a model of NaNs as ok."""
    if not math.isfinite(value):
        raise TrainingDiverged(f"the loss became {value} by step {step} (lr {recipe.lr:g}, "
                               f"batch {recipe.batch_size}): the training diverged")
    return value


def _finite_weights(module: torch.nn.Module, steps: int, recipe: RecipeConfig) -> None:
    """Every parameter and buffer (BatchNorm's statistics too) of ``module`` is finite, read in
    one synchronisation."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise TrainingDiverged(f"the weights became NaN or infinite by step {steps} (lr "
                               f"{recipe.lr:g}, batch {recipe.batch_size}): the training "
                               "diverged")


def check_finite(result: TrainResult, recipe: RecipeConfig) -> None:
    """Raise :class:`TrainingDiverged` for a result whose final loss is not finite (a batched
    head's: :func:`train_heads` trains several, and one diverging must not fail the others)."""
    _finite(result.final_loss, result.steps, recipe)


def _check_banks(recipe: RecipeConfig, banks: list[TrainingFeatures]) -> None:
    """That ``recipe``'s augmentation draws only views the feature banks hold."""
    if not recipe.augment:
        return
    if not all(bank.holds_every_view for bank in banks):
        raise ValueError("augmented training draws views the feature bank does not hold (a bank "
                         "of the unaugmented view)")
    if recipe.augmentation != "crop_flip":
        raise ValueError(f"a feature bank holds crop-and-flip views, not {recipe.augmentation!r}")


def _augmented(x: torch.Tensor, recipe: RecipeConfig, model: ImageClassifier,
               generator: torch.Generator) -> torch.Tensor:
    """A batch of ``[0, 1]`` images augmented as ``recipe.augmentation`` says."""
    if recipe.augmentation == "shift":
        return apply_shift_flip(x, draw_shift_flip(len(x), generator), model.mean,
                                max_shift=x.shape[-1] / 8)
    return random_crop_flip(x, generator)


def _views(idx: torch.Tensor, generator: torch.Generator, augment: bool,
           unaugmented: torch.Tensor | None = None) -> torch.Tensor:
    """The bank views of a batch of host indices ``idx``, on the host: drawn crops and flips
    (the unaugmented view for the samples ``unaugmented``, a host mask, marks), or the
    unaugmented view."""
    if not augment:
        return torch.full_like(idx, identity_view())
    views = view_index(*draw_crop_flip(len(idx), generator))
    if unaugmented is None:
        return views
    return torch.where(unaugmented[idx], torch.full_like(views, identity_view()), views)


def _keep_unaugmented(augmented: torch.Tensor, stored: torch.Tensor, idx: torch.Tensor,
                      unaugmented: torch.Tensor | None) -> torch.Tensor:
    """The augmented batch with the samples ``unaugmented`` marks put back as stored."""
    if unaugmented is None:
        return augmented
    return torch.where(unaugmented[idx][:, None, None, None], stored, augmented)


def train_heads(models: list[ImageClassifier], labels: list[torch.Tensor], *,
                recipe: RecipeConfig, seeds: list[int], features: list[TrainingFeatures],
                unaugmented: list[torch.Tensor | None] | None = None) -> list[TrainResult]:
    """The head path of :func:`train` for several models at once: ``models[k]``'s linear head on
    ``features[k]`` with ``labels[k]``, from ``seeds[k]``, all in one stacked computation.

    Each head draws the same batches and views from its own generator as :func:`train` would, and
    the optimizer's update is elementwise (SGD with momentum and weight decay, or Adam), so every
    head ends where training it alone ends, up to float rounding of the batched products. The
    training sets must have one size (the trials of a scenario do). ``unaugmented[k]`` is
    :func:`train`'s ``unaugmented`` for head ``k``.
    """
    sizes = {len(y) for y in labels}
    if len(sizes) != 1 or not models:
        raise ValueError(f"batched heads need training sets of one size, got {sorted(sizes)}")
    _check_banks(recipe, features)
    start = time.perf_counter()
    (n,) = sizes
    for model in models:
        model.eval()
        for q in model.extractor.parameters():
            q.requires_grad_(False)
    weight = torch.stack([m.head.weight.detach() for m in models]).clone().requires_grad_(True)
    bias = torch.stack([m.head.bias.detach() for m in models]).clone().requires_grad_(True)
    optimizer = _optimizer([weight, bias], recipe)
    per_step = recipe.schedule == "onecycle"
    schedule = _schedule(optimizer, recipe, steps_per_epoch=-(-n // recipe.batch_size))
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    kept = ([u.cpu() if u is not None else None for u in unaugmented]
            if unaugmented is not None else [None] * len(models))
    device = labels[0].device
    steps, loss = 0, torch.full((len(models),), float("nan"))
    for _ in range(recipe.epochs):
        on_host = [torch.randperm(n, generator=g) for g in generators]
        orders = [host_to_device(order, device) for order in on_host]
        for start_i in range(0, n, recipe.batch_size):
            feats, targets = [], []
            for order, host, g, bank, y, keep in zip(orders, on_host, generators, features,
                                                     labels, kept, strict=True):
                batch = slice(start_i, start_i + recipe.batch_size)
                feats.append(bank.lookup(host[batch], _views(host[batch], g, recipe.augment,
                                                             keep)))
                targets.append(y[order[batch]])
            logits = torch.baddbmm(bias[:, None, :], torch.stack(feats), weight.transpose(1, 2))
            k, b, c = logits.shape
            loss = F.cross_entropy(logits.float().reshape(k * b, c), torch.stack(targets).reshape(-1),
                                   reduction="none").view(k, b).mean(1)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # each head's gradient is its own loss's
            optimizer.step()
            if per_step:
                schedule.step()
            steps += 1
        if not per_step:
            schedule.step()
    with torch.no_grad():
        for i, model in enumerate(models):
            model.head.weight.copy_(weight[i])
            model.head.bias.copy_(bias[i])
    seconds = (time.perf_counter() - start) / len(models)
    final = loss.detach().clone()
    broken = ~(torch.isfinite(weight).flatten(1).all(1) & torch.isfinite(bias).all(1))
    final[broken.to(final.device)] = float("nan")  # a head whose weights diverged: its check fails
    return [TrainResult(recipe.epochs, steps, float(final[i]), seconds) for i in range(len(models))]


def _adversarial_batch(model, x, y, recipe: RecipeConfig, generator, trainable) -> torch.Tensor:
    """PGD examples of the batch, made in eval mode so they do not touch BatchNorm statistics."""
    adv = recipe.adversarial
    assert adv is not None
    model.eval()
    x = pgd(model, x, y, epsilon=adv.epsilon, step=adv.step, steps=adv.steps, generator=generator)
    if trainable == "all":
        model.train()
    return x


@torch.no_grad()
def logits(model: ImageClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits ``[N, classes]`` of uint8 images, in eval mode."""
    model.eval()
    out = [model(images[i:i + batch_size].float().div_(255))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, model.head.out_features,
                                                  device=images.device)


def predict(model: ImageClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted classes of uint8 images, in eval mode."""
    return logits(model, images, batch_size).argmax(1)


def accuracy(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, images) == labels).float().mean().item())
