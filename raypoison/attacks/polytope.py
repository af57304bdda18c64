"""Convex Polytope and Bullseye Polytope (PROTOCOL.md §1): poisons whose features surround the
target's, crafted with Adam on the attacker's penultimate features, starting from the bases.

- Convex Polytope: the target's features as a convex combination of the poisons' features; the
  coefficients are refit on the simplex before every step (:func:`refit_coefficients`,
  warm-started), and the images minimize ``½‖f(t) − Σ cᵢ f(xᵢ)‖² / ‖f(t)‖²``.
- Bullseye Polytope: the coefficients are fixed and equal, ``‖mean f(xᵢ) − f(t)‖ / ‖f(t)‖``.

As in the benchmark's crafting code, Adam (betas 0.9, 0.999) steps on the normalized image
``(x − mean) / std`` with the data set's statistics, so ``lr`` 0.04 is a step of about 0.04 × std
≈ 2/255 in pixels; after each step the pixel perturbation is clipped to ε and the image to [0, 1].
``decay_ites`` multiplies the learning rate by ``decay_ratio`` from each listed iteration on
(the benchmark's default: no decay). On an ensemble of attackers each model keeps its own target
features (and, for Convex Polytope, its own coefficients); Convex Polytope sums the models'
losses and Bullseye Polytope averages them, as the two reference trainers do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raypoison.attacks.base import Attack, CraftResult, TrialBatch, crafting_models
from raypoison.attacks.context import CraftingContext
from raypoison.attacks.crafting import Objective, adam_descend, quantize
from raypoison.attacks.registry import ATTACKS
from raypoison.core.host_copy import host_to_device
from raypoison.data.setups import Setup
from raypoison.errors import ConfigError
from raypoison.models.base import ImageClassifier


@dataclass(frozen=True)
class PolytopeParams:
    iterations: int = 1200
    lr: float = 0.04  # Adam's rate on the normalized image, as in the reference
    decay_ites: tuple[int, ...] = ()
    decay_ratio: float = 0.1

    def validate(self, path: str) -> None:
        if self.iterations < 1:
            raise ConfigError(f"{path}.iterations", f"must be ≥ 1, got {self.iterations}")
        if self.lr <= 0:
            raise ConfigError(f"{path}.lr", f"must be > 0, got {self.lr}")
        if any(i < 0 for i in self.decay_ites):
            raise ConfigError(f"{path}.decay_ites", f"must be ≥ 0, got {list(self.decay_ites)}")
        if not 0 < self.decay_ratio <= 1:
            raise ConfigError(f"{path}.decay_ratio", f"must be in (0, 1], got {self.decay_ratio}")


def project_simplex_np(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of a vector onto the probability simplex (sort-based)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1
    ranks = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - cumulative / ranks > 0)[0][-1] + 1
    return np.maximum(v - cumulative[rho - 1] / rho, 0)


def refit_coefficients(coefficients: np.ndarray, features: np.ndarray, target: np.ndarray,
                       rng: np.random.Generator, *, tolerance: float = 1e-6,
                       max_steps: int = 10_000) -> tuple[np.ndarray, int]:
    """Minimize ``‖Aᵀc − b‖`` over the simplex (rows of ``features`` A, ``target`` b), warm-started
    at ``coefficients``; returns the coefficients and the projected steps taken.

    The rule of the benchmark's Convex Polytope code: the step is 2/L with L = ‖AAᵀy‖ / ‖y‖ for
    one Gaussian draw y (a cheap guess at the Gram matrix's largest eigenvalue, here from the
    trial's seeded ``rng``); a gradient step whose unprojected point raises the residual halves
    the step instead of moving; otherwise the point is projected onto the simplex, and the loop
    stops once that moves it by less than ``tolerance`` relative to its norm, returning the point
    before that last move. It works on the n×n Gram matrix in float64, which gives the residuals
    of the d-dimensional problem exactly.
    """
    gram = features @ features.T
    linear = features @ target
    offset = float(target @ target)

    def residual(c: np.ndarray) -> float:
        return float(np.sqrt(max(c @ gram @ c - 2 * c @ linear + offset, 0.0)))

    y = rng.standard_normal(len(coefficients))
    lipschitz = float(np.linalg.norm(gram @ y)) / max(float(np.linalg.norm(y)), 1e-300)
    step = 2 / max(lipschitz, 1e-300)
    c = coefficients.astype(np.float64)
    current = residual(c)
    for done in range(1, max_steps + 1):
        moved = c - step * (gram @ c - linear)
        if residual(moved) > current:
            step /= 2
            continue
        projected = project_simplex_np(moved)
        if float(np.linalg.norm(c - projected)) / max(float(np.linalg.norm(c)), 1e-8) < tolerance:
            return c, done
        c, current = projected, residual(projected)
    return c, max_steps


class _Polytope(Attack):
    Params = PolytopeParams
    crafts_on_several = True
    combine = "mean"  # how the ensemble's per-model losses make one

    def objective(self, model: ImageClassifier, target_features: torch.Tensor, counts: list[int],
                  seeds: list[int]) -> Objective:
        """Per-trial losses [trials] of a batch whose poisons come in groups of ``counts``."""
        raise NotImplementedError

    def craft_many(self, ctx: CraftingContext, setups: list[Setup], seeds: list[int],
                   indices: list[int]) -> list[CraftResult]:
        batch = TrialBatch.stack(ctx, setups)
        losses = []
        for m, model in enumerate(crafting_models(ctx)):
            with torch.no_grad():
                target_features = model.features(batch.targets)
            losses.append(self.objective(model, target_features, batch.counts,
                                         [s + m for s in seeds]))

        def objective(x: torch.Tensor) -> torch.Tensor:
            per_model = torch.stack([loss(x) for loss in losses])
            return per_model.sum(0) if self.combine == "sum" else per_model.mean(0)

        p, bases = self.params, batch.bases
        std = torch.tensor(ctx.data.std, dtype=bases.dtype, device=bases.device).view(1, -1, 1, 1)
        out = adam_descend(objective, bases, bases, ctx.epsilon,
                           iterations=p.iterations, lr=p.lr, scale=std,
                           milestones=tuple(p.decay_ites), gamma=p.decay_ratio)
        images = quantize(out.images, batch.bases_u8, ctx.epsilon)
        return batch.split(images, setups, iterations=out.iterations,
                           loss_initial=out.loss_initial, loss_final=out.loss_final)


@ATTACKS.register("convex_polytope")
class ConvexPolytope(_Polytope):
    combine = "sum"

    def objective(self, model: ImageClassifier, target_features: torch.Tensor, counts: list[int],
                  seeds: list[int]) -> Objective:
        norms = target_features.pow(2).sum(1)
        coefficients = [np.full(n, 1 / n) for n in counts]
        rngs = [np.random.default_rng(seed) for seed in seeds]
        targets = target_features.double().cpu().numpy()

        def loss(x: torch.Tensor) -> torch.Tensor:
            losses = []
            for t, features in enumerate(model.features(x).split(counts)):
                coefficients[t], _ = refit_coefficients(
                    coefficients[t], features.detach().double().cpu().numpy(), targets[t], rngs[t])
                c = host_to_device(torch.from_numpy(coefficients[t]).to(features.dtype),
                                   features.device)
                residual = target_features[t] - c @ features
                losses.append(0.5 * residual.pow(2).sum() / norms[t])
            return torch.stack(losses)

        return loss


@ATTACKS.register("bullseye_polytope")
class BullseyePolytope(_Polytope):
    def objective(self, model: ImageClassifier, target_features: torch.Tensor, counts: list[int],
                  seeds: list[int]) -> Objective:
        norms = target_features.norm(dim=1)

        def loss(x: torch.Tensor) -> torch.Tensor:
            means = torch.stack([f.mean(0) for f in model.features(x).split(counts)])
            return (means - target_features).norm(dim=1) / norms

        return loss
