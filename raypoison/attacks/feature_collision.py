"""Feature Collision (Poison Frogs), as set up in the benchmark (PROTOCOL.md §1).

Each poison starts from its base blended with the target (``blend`` = 0.3 of the target) and
descends ‖f(x) − f(target)‖² on the attacker's penultimate features with plain gradient steps in
pixel units (``step`` 0.001), inside the ε ball around its base. On an ensemble of attackers the
loss is the sum of that distance over the models, each against its own features of the target,
as in the benchmark's code.

``step_rule`` says what happens when the loss rises:

- ``reference`` (the default, the benchmark's rule, :func:`~raypoison.attacks.crafting.descend_lagged`):
  the loss at the current point is compared with the last accepted one; on a rise the step
  shrinks ×``decay`` and the point stays, so in effect a poison stops at its first rise; it also
  stops once a step moves it by less than 1e-5 relative to its norm. The first gradient is taken
  at the unprojected blend.
- ``refuse`` (this project's stronger rule, :func:`~raypoison.attacks.crafting.descend`): a step
  that would raise the loss is refused, the step shrinks ×``decay`` and the poison goes on from
  the better point, for all ``iterations``.

Rows record the iterations that ran (the most any poison of the trial needed) and whether any
poison's loss rose.

``beta`` > 0 is Poison Frogs' ℓ2-penalty variant: ``β‖x − b‖²`` (images in [0, 1], summed over
pixels) is added to each poison's loss, which keeps it near its base even where ε would allow more.
It is minimized by the same adaptive gradient step, where Poison Frogs takes a forward-backward
(proximal) step for the penalty; both seek the minimizer of the same objective. The benchmark's
setting is 0: the ε ball alone bounds the poisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from raypoison.attacks.base import Attack, CraftResult, TrialBatch, crafting_models
from raypoison.attacks.context import CraftingContext
from raypoison.attacks.crafting import descend, descend_lagged, quantize
from raypoison.attacks.registry import ATTACKS
from raypoison.data.setups import Setup
from raypoison.errors import ConfigError


@ATTACKS.register("feature_collision")
class FeatureCollision(Attack):
    crafts_on_several = True
    @dataclass(frozen=True)
    class Params:
        iterations: int = 120
        step: float = 0.001
        decay: float = 0.2
        blend: float = 0.3
        beta: float = 0.0  # weight of the ℓ2 penalty toward the base; 0 turns it off
        step_rule: Literal["reference", "refuse"] = "reference"

        def validate(self, path: str) -> None:
            if self.iterations < 1:
                raise ConfigError(f"{path}.iterations", f"must be ≥ 1, got {self.iterations}")
            if self.step <= 0:
                raise ConfigError(f"{path}.step", f"must be > 0, got {self.step}")
            if not 0 < self.decay < 1:
                raise ConfigError(f"{path}.decay", f"must be in (0, 1), got {self.decay}")
            if not 0 <= self.blend <= 1:
                raise ConfigError(f"{path}.blend", f"must be in [0, 1], got {self.blend}")
            if self.beta < 0:
                raise ConfigError(f"{path}.beta", f"must be ≥ 0, got {self.beta}")

    def craft_many(self, ctx: CraftingContext, setups: list[Setup], seeds: list[int],
                   indices: list[int]) -> list[CraftResult]:
        """Every poison descends on its own, so trials batch exactly."""
        p = self.params
        models = crafting_models(ctx)
        batch = TrialBatch.stack(ctx, setups)
        bases, group = batch.bases, batch.group
        with torch.no_grad():
            target_features = [m.features(batch.targets)[group] for m in models]

        def objective(x: torch.Tensor) -> torch.Tensor:
            loss = torch.stack([(m.features(x) - t).pow(2).sum(dim=1)
                                for m, t in zip(models, target_features, strict=True)]).sum(0)
            if p.beta:
                loss = loss + p.beta * (x - bases).pow(2).flatten(1).sum(1)
            return loss

        start = (1 - p.blend) * bases + p.blend * batch.targets[group]
        rule = descend_lagged if p.step_rule == "reference" else descend
        out = rule(objective, start, bases, ctx.epsilon,
                   iterations=p.iterations, step=p.step, decay=p.decay)
        images = quantize(out.images, batch.bases_u8, ctx.epsilon)
        per_trial = torch.zeros(len(setups), device=bases.device)
        initial = per_trial.index_add(0, group, out.loss_initial) / torch.as_tensor(
            batch.counts, device=bases.device)
        final = per_trial.index_add(0, group, out.loss_final) / torch.as_tensor(
            batch.counts, device=bases.device)
        results = batch.split(images, setups, iterations=out.iterations, loss_initial=initial,
                              loss_final=final)
        assert out.per_image_iterations is not None and out.rose is not None  # the rules keep them
        for t, result in enumerate(results):
            mine = group == t
            result.iterations = int(out.per_image_iterations[mine].max())
            result.loss_rose = bool(out.rose[mine].any())
        return results
