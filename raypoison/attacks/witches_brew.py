"""Witches' Brew (gradient matching, Geiping et al. 2021), as set up in the benchmark.

The poisons' training gradient is aligned with the gradient that would push the target toward the
base class: minimize ``1 − cos(∇θ L(f(t), base), ∇θ L(f(aug(xᵢ)), base))`` over the poisons,
with signed Adam, differentiable augmentation and several restarts (the restart with the lowest
final objective wins). It crafts on a model trained on the clean training set:

- By default the scenario's attacker (a zoo checkpoint or a ``pretrain``). When ``attacker`` lists
  several models they are a pool shared by the scenario's trials: trial ``i`` crafts on model
  ``i mod k``, so every model serves the same share of trials, whatever order they run in.
- ``ensemble: true`` crafts every trial on all of them, the objective averaged over the models.
- ``fresh_model: true`` trains a crafting model for each trial instead: the pool model's
  architecture, initialized from a seed of its own, trained from scratch with the scenario's
  recipe on the trial's clean training set (the images its victims train on, bases unpoisoned).
  Meant for from-scratch scenarios, where that recipe trains a whole network; an attacker who
  never shares a model with the victims across trials, and by far the dearest option.

Random starts and augmentations come from the trial's crafting seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from raypoison.attacks.base import Attack, CraftResult, Poisons
from raypoison.attacks.crafting import adam_descend, quantize
from raypoison.attacks.registry import ATTACKS
from raypoison.data.augment import apply_crop_flip, draw_crop_flip
from raypoison.errors import ConfigError
from raypoison.spec import derive_seed
from raypoison.training import train


@ATTACKS.register("witches_brew")
class WitchesBrew(Attack):
    crafts_on_several = True

    @dataclass(frozen=True)
    class Params:
        iterations: int = 250
        restarts: int = 8
        lr: float = 0.01
        augment: bool = True
        ensemble: bool = False  # craft on every attacker model at once, not one per trial
        fresh_model: bool = False  # train a crafting model per trial (see the module docstring)

        def validate(self, path: str) -> None:
            for key in ("iterations", "restarts"):
                if getattr(self, key) < 1:
                    raise ConfigError(f"{path}.{key}", f"must be ≥ 1, got {getattr(self, key)}")
            if self.lr <= 0:
                raise ConfigError(f"{path}.lr", f"must be > 0, got {self.lr}")
            if self.ensemble and self.fresh_model:
                raise ConfigError(f"{path}.fresh_model", "trains one model per trial; it cannot "
                                  "be combined with ensemble")

    @classmethod
    def needs_attacker_weights(cls, params: Any) -> bool:
        return not params.fresh_model

    @classmethod
    def scenario_problem(cls, params: Any, scenario) -> str | None:
        if params.fresh_model and scenario.mode != "scratch":
            return (f"fresh_model trains a network from scratch with the scenario's recipe; a "
                    f"{scenario.mode} scenario's recipe is not one for that")
        return None

    def crafted_on(self, ctx, index: int) -> tuple[str, ...]:
        names = ctx.scenario.attackers
        return names if self.params.ensemble else (names[index % len(names)],)

    def models_for_trial(self, ctx, setup, index: int) -> list[torch.nn.Module]:
        """The pool model of trial ``index``, all of them (``ensemble``), or a fresh one."""
        names = self.crafted_on(ctx, index)
        if self.params.fresh_model:
            return [train_crafting_model(ctx, names[0], setup, index)]
        return [ctx.model(name) for name in names]

    def craft(self, ctx, setup, seed, index) -> CraftResult:
        p = self.params
        models = self.models_for_trial(ctx, setup, index)
        params = [q for m in models for q in m.parameters()]
        bases_u8 = ctx.data.train_x[list(setup.base_indices)]
        bases = bases_u8.float() / 255
        target = ctx.data.test_x[setup.target_index : setup.target_index + 1].float() / 255
        labels = torch.full((len(bases),), setup.base_class, device=bases.device)
        generator = torch.Generator().manual_seed(seed)
        epsilon = ctx.scenario.epsilon
        for q in params:  # the shared frozen model lends its parameters to autograd
            q.requires_grad_(True)
        try:
            targets = []  # per model: its parameters, the target's gradient and that one's norm
            for model in models:
                weights = list(model.parameters())
                grad = [g.detach() for g in torch.autograd.grad(
                    F.cross_entropy(model(target), labels[:1]), weights)]
                targets.append((model, weights, grad, torch.sqrt(sum(g.pow(2).sum()
                                                                     for g in grad))))

            def objective(x: torch.Tensor) -> torch.Tensor:
                if p.augment:
                    x = apply_crop_flip(x, *draw_crop_flip(len(x), generator))
                losses = []
                for model, weights, target_grad, target_norm in targets:
                    grads = torch.autograd.grad(F.cross_entropy(model(x), labels), weights,
                                                create_graph=True)
                    dot = sum((g * t).sum() for g, t in zip(grads, target_grad, strict=True))
                    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
                    losses.append(1 - dot / (norm * target_norm + 1e-12))
                return torch.stack(losses).mean().reshape(1)

            best = None
            for _ in range(p.restarts):
                noise = (torch.rand(bases.shape, generator=generator) * 2 - 1).to(bases.device)
                out = adam_descend(objective, bases + epsilon * noise, bases, epsilon,
                                   iterations=p.iterations, lr=p.lr, signed=True)
                if best is None or float(out.loss_final.sum()) < float(best.loss_final.sum()):
                    best = out
        finally:
            for q in params:
                q.requires_grad_(False)
        images = quantize(best.images, bases_u8, epsilon)
        return CraftResult(
            Poisons(images, setup.base_indices, (setup.base_class,) * len(bases),
                    setup.target_index),
            iterations=best.iterations * p.restarts, loss_initial=float(best.loss_initial.sum()),
            loss_final=float(best.loss_final.sum()), crafted_on=self.crafted_on(ctx, index))


def train_crafting_model(ctx, name: str, setup, index: int) -> torch.nn.Module:
    """A model of ``name``'s architecture trained from scratch for trial ``index`` alone, on the
    trial's clean training set with the scenario's recipe; frozen and in eval mode."""
    scenario, data = ctx.scenario, ctx.data
    seed = derive_seed(scenario.seed, index, name, "crafting-model")
    model = ctx.fresh_victim(name, seed)  # from scratch: fresh_model runs in scratch scenarios
    pool = torch.as_tensor(ctx.training_pool(setup, index))
    train(model, data.train_x[pool], data.train_y[pool], recipe=scenario.training_recipe,
          seed=seed, trainable="all")
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    return model
