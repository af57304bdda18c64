"""Witches' Brew (gradient matching, Geiping et al. 2021), as the benchmark ran it.

The poisons' training gradient is aligned with the gradient that would push the target toward the
base class: minimize ``1 − cos(∇θ L(f(t), base), ∇θ L(f(aug(xᵢ)), base))`` over the poisons,
one cosine over all parameters for each batch of ``pbatch`` poisons, as the reference
(``poisoning-gradient-matching``, whose defaults the benchmark used) does:

- signed Adam on the perturbation of the normalized image, at learning rate
  ``tau × (pbatch / 512) / ensemble size``, ×0.1 at 3/8, 5/8 and 7/8 of the iterations (93, 156
  and 218 of 250, the reference's ``iterations // 2.667`` etc.). A step is ``lr × std`` in
  pixels, so the std sets its length: ``step_std`` (per channel) gives the reference's own (its
  ``forest/consts.py``: CIFAR-10 0.2470, 0.2435, 0.2616, which the benchmark configs set), and
  without it the data set's std is taken (the benchmark's CIFAR-10 0.2023, 0.1994, 0.2010: steps
  18-23% shorter in pixels);
- each restart starts from a Gaussian perturbation of scale ε clipped to ε (projected to the
  image range only after the first step); 8 restarts, keeping the one whose loss in its last
  iteration (before the last step, as the reference scores it) is lowest;
- differentiable augmentation (``augmentation: shift``, the reference's): a continuous random
  shift of up to ``max_shift`` pixels with bilinear resampling and a horizontal flip, fresh in
  every iteration; ``crop_flip`` uses this project's integer crop-and-flip instead. The
  reference's shift is an eighth of the image side (its ``RandomTransform`` shift index 8 of 32
  on CIFAR, 16 of 64 on Tiny-ImageNet, half an index a pixel): the default 4 is CIFAR's, and
  ``configs/tinyimagenet-scratch.yaml`` sets 8.

It crafts on a model trained on the clean training set:

- ``fresh_model: true`` (the benchmark's from-scratch runs, and the default of the from-scratch
  configs) trains a crafting model for each trial: the pool model's architecture, initialized
  from a seed of its own, trained from scratch on the trial's clean training set (the images its
  victims train on, bases unpoisoned) with ``recipe`` (default: the scenario's recipe; the
  from-scratch configs give the reference's crafting recipe).
- Otherwise the scenario's attacker (a zoo checkpoint or a ``pretrain``). When ``attacker`` lists
  several models they are a pool shared by the scenario's trials: trial ``i`` crafts on model
  ``i mod k``, so every model serves the same share of trials, whatever order they run in.
- ``ensemble: true`` crafts every trial on all of them; the models' gradients add up.
- ``model: NAME`` crafts on that model of the scenario instead of the attacker (with
  ``fresh_model``, a network of its architecture trained for the trial). The reference's
  Tiny-ImageNet poisons were crafted on a ResNet-34 and tested on VGG16 victims
  (``benchmark_gen_tiny_imagenet.py``: ``source_model = 'ResNet34'``), while the other attacks
  craft on the VGG16; ``configs/tinyimagenet-scratch.yaml`` says so.

Rows name the crafting model (``crafting_model``). Random starts and augmentations come from the
trial's crafting seed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F

from raypoison.attacks.base import Attack, CraftResult, Poisons
from raypoison.attacks.context import CraftingContext
from raypoison.attacks.crafting import CraftOutcome, adam_descend, quantize
from raypoison.attacks.registry import ATTACKS
from raypoison.core.host_copy import host_to_device
from raypoison.core.identity import derive_seed
from raypoison.data.augment import apply_crop_flip, apply_shift_flip, draw_crop_flip, draw_shift_flip
from raypoison.data.setups import Setup
from raypoison.errors import ConfigError
from raypoison.models.base import ImageClassifier
from raypoison.training.loop import train
from raypoison.training.recipe import RecipeConfig


def schedule_milestones(iterations: int) -> tuple[int, ...]:
    """The reference's milestones for its attack schedule: 3/8, 5/8 and 7/8 of the iterations as
    it computes them (93, 156, 218 for 250)."""
    return tuple(int(iterations // d) for d in (2.667, 1.6, 1.142))


def best_restart(outcomes: list[CraftOutcome]) -> CraftOutcome:
    """The restart the reference keeps: the lowest loss in its last iteration (computed before
    the last step), not the loss after it; the first of equals."""
    return min(outcomes, key=lambda out: float(_loss_last(out).sum()))


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum(terms)``, left to right as Python adds (the order the results were made with)."""
    return cast(torch.Tensor, sum(terms))


def _loss_last(outcome: CraftOutcome) -> torch.Tensor:
    if outcome.loss_last is None:
        raise ValueError("a restart's outcome keeps no last loss")
    return outcome.loss_last


@ATTACKS.register("witches_brew")
class WitchesBrew(Attack):
    crafts_on_several = True

    @dataclass(frozen=True)
    class Params:
        iterations: int = 250
        restarts: int = 8
        tau: float = 0.1  # signed Adam's rate before the batch and ensemble scaling
        pbatch: int = 512  # poisons per gradient-matching batch
        augment: bool = True
        augmentation: Literal["shift", "crop_flip"] = "shift"
        ensemble: bool = False  # craft on every attacker model at once, not one per trial
        fresh_model: bool = False  # train a crafting model per trial (see the module docstring)
        recipe: RecipeConfig | None = None  # the fresh crafting model's (default: the scenario's)
        step_std: tuple[float, ...] | None = None  # the std of the step's units (module docstring)
        max_shift: float = 4.0  # pixels, ``augmentation: shift`` (module docstring)
        model: str | None = None  # a scenario model to craft on instead of the attacker

        def validate(self, path: str) -> None:
            for key in ("iterations", "restarts", "pbatch"):
                if getattr(self, key) < 1:
                    raise ConfigError(f"{path}.{key}", f"must be ≥ 1, got {getattr(self, key)}")
            if self.step_std is not None and (
                    len(self.step_std) != 3 or any(v <= 0 for v in self.step_std)):
                raise ConfigError(f"{path}.step_std", "must be three positive numbers, one per "
                                  f"colour channel, got {list(self.step_std)}")
            if self.tau <= 0:
                raise ConfigError(f"{path}.tau", f"must be > 0, got {self.tau}")
            if self.max_shift <= 0:
                raise ConfigError(f"{path}.max_shift", f"must be > 0, got {self.max_shift}")
            if self.recipe is not None and not self.fresh_model:
                raise ConfigError(f"{path}.recipe", "trains the fresh crafting model; it needs "
                                  "fresh_model: true")
            if self.ensemble and self.fresh_model:
                raise ConfigError(f"{path}.fresh_model", "trains one model per trial; it cannot "
                                  "be combined with ensemble")
            if self.ensemble and self.model is not None:
                raise ConfigError(f"{path}.model", "names the one model to craft on; it cannot "
                                  "be combined with ensemble")

    @classmethod
    def needs_attacker_weights(cls, params: Any) -> bool:
        return not params.fresh_model and params.model is None

    @classmethod
    def required_models(cls, params: Any, scenario: Any) -> list[str]:
        # a fresh model needs the architecture only (checked in scenario_problem)
        return [params.model] if params.model is not None and not params.fresh_model else []

    @classmethod
    def scenario_problem(cls, params: Any, scenario: Any) -> str | None:
        if params.model is not None and params.model not in scenario.models:
            return (f"model: the scenario has no model {params.model!r} (defined: "
                    f"{list(scenario.models)})")
        if params.fresh_model and scenario.mode != "scratch":
            return (f"fresh_model trains a network from scratch with the scenario's recipe; a "
                    f"{scenario.mode} scenario's recipe is not one for that")
        return None

    def crafted_on(self, ctx: CraftingContext, index: int) -> tuple[str, ...]:
        if self.params.model is not None:
            return (self.params.model,)
        names = ctx.attackers
        return names if self.params.ensemble else (names[index % len(names)],)

    def models_for_trial(self, ctx: CraftingContext, setup: Setup, index: int
                         ) -> list[ImageClassifier]:
        """The pool model of trial ``index``, all of them (``ensemble``), or a fresh one."""
        names = self.crafted_on(ctx, index)
        if self.params.fresh_model:
            return [train_crafting_model(ctx, names[0], setup, index, self.params.recipe)]
        return [ctx.model(name) for name in names]

    def craft(self, ctx: CraftingContext, setup: Setup, seed: int, index: int) -> CraftResult:
        p = self.params
        models = self.models_for_trial(ctx, setup, index)
        params = [q for m in models for q in m.parameters()]
        bases_u8 = ctx.data.train_x[list(setup.base_indices)]
        bases = bases_u8.float() / 255
        target = ctx.data.test_x[setup.target_index : setup.target_index + 1].float() / 255
        labels = torch.full((len(bases),), setup.base_class, device=bases.device)
        generator = torch.Generator().manual_seed(seed)
        epsilon = ctx.epsilon
        mean = torch.tensor(ctx.data.mean, device=bases.device).view(1, -1, 1, 1)
        std = torch.tensor(p.step_std or ctx.data.std, device=bases.device).view(1, -1, 1, 1)
        chunks = [slice(i, i + p.pbatch) for i in range(0, len(bases), p.pbatch)]
        for q in params:  # the shared frozen model lends its parameters to autograd
            q.requires_grad_(True)
        try:
            targets = []  # per model: its parameters, the target's gradient and that one's norm
            for model in models:
                weights = list(model.parameters())
                grad = [g.detach() for g in torch.autograd.grad(
                    F.cross_entropy(model(target), labels[:1]), weights)]
                targets.append((model, weights, grad, torch.sqrt(_total(g.pow(2).sum()
                                                                     for g in grad))))

            def augmented(x: torch.Tensor) -> torch.Tensor:
                if not p.augment:
                    return x
                if p.augmentation == "shift":
                    return apply_shift_flip(x, draw_shift_flip(len(x), generator), mean,
                                            max_shift=p.max_shift)
                return apply_crop_flip(x, *draw_crop_flip(len(x), generator))

            def objective(x: torch.Tensor) -> torch.Tensor:
                x = augmented(x)  # one draw per iteration, shared by the ensemble's models
                losses = []
                for model, weights, target_grad, target_norm in targets:
                    for chunk in chunks:
                        grads = torch.autograd.grad(
                            F.cross_entropy(model(x[chunk]), labels[chunk]), weights,
                            create_graph=True)
                        dot = sum((g * t).sum() for g, t in zip(grads, target_grad, strict=True))
                        norm = torch.sqrt(_total(g.pow(2).sum() for g in grads))
                        losses.append(1 - dot / (norm * target_norm + 1e-12))
                return torch.stack(losses).mean().reshape(1)

            lr = p.tau * (p.pbatch / 512) / len(models)
            outcomes = []
            for _ in range(p.restarts):
                noise = host_to_device(torch.randn(bases.shape, generator=generator), bases.device)
                start = bases + (epsilon * noise).clamp(-epsilon, epsilon)
                outcomes.append(adam_descend(
                    objective, start, bases, epsilon, iterations=p.iterations, lr=lr, signed=True,
                    scale=std, milestones=schedule_milestones(p.iterations), project_start=False))
            best = best_restart(outcomes)
        finally:
            for q in params:
                q.requires_grad_(False)
        images = quantize(best.images, bases_u8, epsilon)
        names = self.crafted_on(ctx, index)
        return CraftResult(
            Poisons(images, setup.base_indices, (setup.base_class,) * len(bases),
                    setup.target_index),
            iterations=best.iterations * p.restarts, loss_initial=float(best.loss_initial.sum()),
            loss_final=float(best.loss_final.sum()), crafted_on=names,
            crafting_model=(f"fresh {names[0]} (trial {index})" if p.fresh_model
                            else ",".join(names)))


def train_crafting_model(ctx: CraftingContext, name: str, setup: Setup, index: int,
                         recipe: RecipeConfig | None = None) -> ImageClassifier:
    """A model of ``name``'s architecture trained from scratch for trial ``index`` alone, on the
    trial's clean training set with ``recipe`` (default: the scenario's); frozen, in eval mode."""
    data = ctx.data
    seed = derive_seed(ctx.seed, index, name, "crafting-model")
    model = ctx.fresh_victim(name, seed)  # from scratch: fresh_model runs in scratch scenarios
    pool = torch.as_tensor(ctx.training_pool(setup, index))
    recipe = recipe or ctx.training_recipe
    train(model, data.train_x[pool], data.train_y[pool], recipe=recipe, seed=seed, trainable="all")
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    return model
