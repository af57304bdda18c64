"""Witches' Brew (gradient matching, Geiping et al. 2021), as set up in the benchmark.

The poisons' training gradient is aligned with the gradient that would push the target toward the
base class: minimize ``1 − cos(∇θ L(f(t), base), ∇θ L(f(aug(xᵢ)), base))`` over the poisons,
with signed Adam, differentiable augmentation and several restarts (the restart with the lowest
final objective wins). It crafts on the scenario's attacker model, which for from-scratch
scenarios is a model trained on the clean training set (a zoo checkpoint or a ``pretrain``).
Random starts and augmentations come from the trial's crafting seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raypoison.attacks.base import Attack, CraftResult, Poisons
from raypoison.attacks.crafting import adam_descend, quantize
from raypoison.attacks.registry import ATTACKS
from raypoison.data.augment import apply_crop_flip, draw_crop_flip
from raypoison.errors import ConfigError


@ATTACKS.register("witches_brew")
class WitchesBrew(Attack):
    @dataclass(frozen=True)
    class Params:
        iterations: int = 250
        restarts: int = 8
        lr: float = 0.01
        augment: bool = True

        def validate(self, path: str) -> None:
            for key in ("iterations", "restarts"):
                if getattr(self, key) < 1:
                    raise ConfigError(f"{path}.{key}", f"must be ≥ 1, got {getattr(self, key)}")
            if self.lr <= 0:
                raise ConfigError(f"{path}.lr", f"must be > 0, got {self.lr}")

    def craft(self, ctx, setup, seed, index) -> CraftResult:
        p = self.params
        model = ctx.model(ctx.scenario.attacker)
        params = [q for q in model.parameters()]
        bases_u8 = ctx.data.train_x[list(setup.base_indices)]
        bases = bases_u8.float() / 255
        target = ctx.data.test_x[setup.target_index : setup.target_index + 1].float() / 255
        labels = torch.full((len(bases),), setup.base_class, device=bases.device)
        generator = torch.Generator().manual_seed(seed)
        epsilon = ctx.scenario.epsilon
        for q in params:  # the shared frozen model lends its parameters to autograd
            q.requires_grad_(True)
        try:
            target_grad = torch.autograd.grad(
                F.cross_entropy(model(target), labels[:1]), params)
            target_grad = [g.detach() for g in target_grad]
            target_norm = torch.sqrt(sum(g.pow(2).sum() for g in target_grad))

            def objective(x: torch.Tensor) -> torch.Tensor:
                if p.augment:
                    x = apply_crop_flip(x, *draw_crop_flip(len(x), generator))
                grads = torch.autograd.grad(F.cross_entropy(model(x), labels), params,
                                            create_graph=True)
                dot = sum((g * t).sum() for g, t in zip(grads, target_grad, strict=True))
                norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
                return (1 - dot / (norm * target_norm + 1e-12)).reshape(1)

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
            loss_final=float(best.loss_final.sum()))
