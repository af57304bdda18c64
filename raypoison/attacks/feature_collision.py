"""Feature Collision (Poison Frogs), as set up in the benchmark (PROTOCOL.md §1).

Each poison starts from its base blended with the target (``blend`` = 0.3 of the target) and
descends ‖f(x) − f(target)‖² on the attacker's penultimate features, with the adaptive gradient
step of the crafting loop, inside the ε ball around its base.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raypoison.attacks.base import Attack, CraftResult, Poisons
from raypoison.attacks.crafting import descend, quantize
from raypoison.attacks.registry import ATTACKS
from raypoison.errors import ConfigError


@ATTACKS.register("feature_collision")
class FeatureCollision(Attack):
    @dataclass(frozen=True)
    class Params:
        iterations: int = 120
        step: float = 0.001
        decay: float = 0.2
        blend: float = 0.3

        def validate(self, path: str) -> None:
            if self.iterations < 1:
                raise ConfigError(f"{path}.iterations", f"must be ≥ 1, got {self.iterations}")
            if self.step <= 0:
                raise ConfigError(f"{path}.step", f"must be > 0, got {self.step}")
            if not 0 < self.decay < 1:
                raise ConfigError(f"{path}.decay", f"must be in (0, 1), got {self.decay}")
            if not 0 <= self.blend <= 1:
                raise ConfigError(f"{path}.blend", f"must be in [0, 1], got {self.blend}")

    def craft(self, ctx, setup, seed, index) -> CraftResult:
        p = self.params
        model = ctx.model(ctx.scenario.attacker)
        bases_u8 = ctx.data.train_x[list(setup.base_indices)]
        bases = bases_u8.float() / 255
        target = ctx.data.test_x[setup.target_index : setup.target_index + 1].float() / 255
        with torch.no_grad():
            target_features = model.features(target)

        def objective(x: torch.Tensor) -> torch.Tensor:
            return (model.features(x) - target_features).pow(2).sum(dim=1)

        start = (1 - p.blend) * bases + p.blend * target
        out = descend(
            objective, start, bases, ctx.scenario.epsilon,
            iterations=p.iterations, step=p.step, decay=p.decay,
        )
        images = quantize(out.images, bases_u8, ctx.scenario.epsilon)
        labels = (setup.base_class,) * len(setup.base_indices)
        return CraftResult(
            Poisons(images, setup.base_indices, labels, setup.target_index),
            iterations=out.iterations,
            loss_initial=float(out.loss_initial.mean()),
            loss_final=float(out.loss_final.mean()),
        )
