"""Convex Polytope and Bullseye Polytope (PROTOCOL.md §1): poisons whose features surround the
target's, crafted with Adam on the attacker's penultimate features, starting from the bases.

- Convex Polytope: the target's features as a convex combination of the poisons' features; the
  coefficients are refit on the simplex at every step (projected gradient descent, warm-started),
  and the images minimize ``½‖f(t) − Σ cᵢ f(xᵢ)‖² / ‖f(t)‖²``.
- Bullseye Polytope: the coefficients are fixed and equal, ``‖mean f(xᵢ) − f(t)‖ / ‖f(t)‖``.

Adam's learning rate is in pixel units of images in [0, 1] (the models normalize inside). On an
ensemble of attackers each model keeps its own target features (and, for Convex Polytope, its own
coefficients), and the loss is the mean of the models' losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raypoison.attacks.base import Attack, CraftResult, TrialBatch, crafting_models
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
    crafts_on_several = True

    def objective(self, model, target_features, counts):
        """Per-trial losses [trials] of a batch whose poisons come in groups of ``counts``."""
        raise NotImplementedError

    def craft_batch(self, ctx, setups, seeds, indices) -> list[CraftResult]:
        batch = TrialBatch.stack(ctx, setups)
        losses = []
        for model in crafting_models(ctx):
            with torch.no_grad():
                target_features = model.features(batch.targets)
            losses.append(self.objective(model, target_features, batch.counts))

        def objective(x: torch.Tensor) -> torch.Tensor:
            return torch.stack([loss(x) for loss in losses]).mean(0)

        bases = batch.bases
        out = adam_descend(objective, bases, bases, ctx.scenario.epsilon,
                           iterations=self.params.iterations, lr=self.params.lr)
        images = quantize(out.images, batch.bases_u8, ctx.scenario.epsilon)
        return batch.split(images, setups, iterations=out.iterations,
                           loss_initial=out.loss_initial, loss_final=out.loss_final)


@ATTACKS.register("convex_polytope")
class ConvexPolytope(_Polytope):
    def objective(self, model, target_features, counts):
        norms = target_features.pow(2).sum(1)
        coefficients = [torch.full((n,), 1 / n, device=target_features.device) for n in counts]

        def loss(x: torch.Tensor) -> torch.Tensor:
            losses = []
            for t, features in enumerate(model.features(x).split(counts)):
                with torch.no_grad():
                    coefficients[t] = refit_coefficients(coefficients[t], features.detach(),
                                                         target_features[t])
                residual = target_features[t] - coefficients[t] @ features
                losses.append(0.5 * residual.pow(2).sum() / norms[t])
            return torch.stack(losses)

        return loss


@ATTACKS.register("bullseye_polytope")
class BullseyePolytope(_Polytope):
    def objective(self, model, target_features, counts):
        norms = target_features.norm(dim=1)

        def loss(x: torch.Tensor) -> torch.Tensor:
            means = torch.stack([f.mean(0) for f in model.features(x).split(counts)])
            return (means - target_features).norm(dim=1) / norms

        return loss
