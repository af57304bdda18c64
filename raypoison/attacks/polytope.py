"""Convex Polytope and Bullseye Polytope (PROTOCOL.md §1): poisons whose features surround the
target's, crafted with Adam on the attacker's penultimate features, starting from the bases.

- Convex Polytope: the target's features as a convex combination of the poisons' features; the
  coefficients are refit on the simplex at every step (projected gradient descent, warm-started),
  and the images minimize ``½‖f(t) − Σ cᵢ f(xᵢ)‖² / ‖f(t)‖²``.
- Bullseye Polytope: the coefficients are fixed and equal, ``‖mean f(xᵢ) − f(t)‖ / ‖f(t)‖``.

Adam's learning rate is in pixel units of images in [0, 1] (the models normalize inside).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raypoison.attacks.base import Attack, CraftResult, Poisons
from raypoison.attacks.crafting import adam_descend, project_simplex, quantize
from raypoison.attacks.registry import ATTACKS
from raypoison.errors import ConfigError


@dataclass(frozen=True)
class PolytopeParams:
    iterations: int = 1200
    lr: float = 0.04

    def validate(self, path: str) -> None:
        if self.iterations < 1:
            raise ConfigError(f"{path}.iterations", f"must be ≥ 1, got {self.iterations}")
        if self.lr <= 0:
            raise ConfigError(f"{path}.lr", f"must be > 0, got {self.lr}")


def refit_coefficients(coefficients: torch.Tensor, features: torch.Tensor, target: torch.Tensor,
                       steps: int = 20) -> torch.Tensor:
    """Minimize ½‖target − cᵀ features‖² over the simplex by projected gradient descent."""
    gram = features @ features.T
    step = 1 / torch.linalg.matrix_norm(gram, ord=2).clamp_min(1e-12)
    c = coefficients
    for _ in range(steps):
        grad = gram @ c - features @ target
        c = project_simplex(c - step * grad)
    return c


class _Polytope(Attack):
    Params = PolytopeParams

    def objective(self, model, target_features):
        raise NotImplementedError

    def craft(self, ctx, setup, seed, index) -> CraftResult:
        model = ctx.model(ctx.scenario.attacker)
        bases_u8 = ctx.data.train_x[list(setup.base_indices)]
        bases = bases_u8.float() / 255
        target = ctx.data.test_x[setup.target_index : setup.target_index + 1].float() / 255
        with torch.no_grad():
            target_features = model.features(target)[0]
        out = adam_descend(self.objective(model, target_features), bases, bases,
                           ctx.scenario.epsilon, iterations=self.params.iterations,
                           lr=self.params.lr)
        images = quantize(out.images, bases_u8, ctx.scenario.epsilon)
        labels = (setup.base_class,) * len(setup.base_indices)
        return CraftResult(Poisons(images, setup.base_indices, labels, setup.target_index),
                           iterations=out.iterations, loss_initial=float(out.loss_initial.sum()),
                           loss_final=float(out.loss_final.sum()))


@ATTACKS.register("convex_polytope")
class ConvexPolytope(_Polytope):
    def objective(self, model, target_features):
        norm = target_features.pow(2).sum()
        state = {"c": None}

        def loss(x: torch.Tensor) -> torch.Tensor:
            features = model.features(x)
            if state["c"] is None:
                state["c"] = torch.full((len(x),), 1 / len(x), device=x.device)
            with torch.no_grad():
                state["c"] = refit_coefficients(state["c"], features.detach(), target_features)
            residual = target_features - state["c"] @ features
            return (0.5 * residual.pow(2).sum() / norm).reshape(1)

        return loss


@ATTACKS.register("bullseye_polytope")
class BullseyePolytope(_Polytope):
    def objective(self, model, target_features):
        norm = target_features.norm()

        def loss(x: torch.Tensor) -> torch.Tensor:
            return ((model.features(x).mean(0) - target_features).norm() / norm).reshape(1)

        return loss
