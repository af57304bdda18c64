"""The benchmark's backdoor attacks (PROTOCOL.md §1). Poisons keep the base class label; at test
time the trigger is pasted on the target, which succeeds if it is then classified as the base
class. Rows also carry the attack success rate over the target class's triggered test images.

- Clean-Label Backdoor: untargeted PGD on the bases against an adversarially trained model (ε,
  step 2/255, 20 steps, random start) makes them hard to learn from their content; the trigger is
  stamped at the bottom-right corner, and the whole perturbation is clipped back to ε.
- Hidden Trigger Backdoor: each poison starts at its base and moves, within ε, toward the
  features of a training image of the target class with the trigger pasted 5 pixels from the
  bottom-right corner. Those source images are drawn with the trial's crafting seed (the reference
  code did not seed them). Before every step the poisons are re-paired with goals on their
  current features as the reference does (:func:`repair`: many-to-one, so a goal can serve
  several poisons). The loss is the summed squared feature distance, minimized by plain gradient
  steps (0.001, at most 5,000, stopping once the loss is below 10); the step is ×0.95 every
  2,000 iterations on CIFAR-like data and ×0.5 every 1,000 on Tiny-ImageNet, the reference's
  two schedules (``decay`` / ``decay_every`` override them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from raypoison.attacks.base import Attack, CraftResult, Poisons
from raypoison.attacks.context import CraftingContext
from raypoison.attacks.crafting import project, quantize, scheduled_descend
from raypoison.attacks.registry import ATTACKS
from raypoison.core.schema import parse_fraction
from raypoison.data.setups import Setup
from raypoison.data.triggers import TriggerConfig, make_trigger, paste
from raypoison.errors import ConfigError
from raypoison.training.adversarial import pgd


def _poisons(setup, images) -> Poisons:
    return Poisons(images, setup.base_indices, (setup.base_class,) * len(images),
                   setup.target_index)


@ATTACKS.register("clean_label_backdoor")
class CleanLabelBackdoor(Attack):
    @dataclass(frozen=True)
    class Params:
        model: str | None = None  # the scenario's adversarially trained model (default: attacker)
        step: float = field(default=2 / 255, metadata={"parse": parse_fraction})
        steps: int = 20
        trigger: TriggerConfig = field(
            default_factory=lambda: TriggerConfig(kind="reference", name="clbd"))

        def validate(self, path: str) -> None:
            if self.step <= 0 or self.steps < 1:
                raise ConfigError(path, "step must be > 0 and steps ≥ 1")

    @classmethod
    def required_models(cls, params: Any, scenario: Any) -> list[str]:
        return [params.model] if params.model else []

    @classmethod
    def needs_attacker_weights(cls, params: Any) -> bool:
        return not params.model  # it crafts on its own model when it names one

    def craft(self, ctx: CraftingContext, setup: Setup, seed: int, index: int) -> CraftResult:
        p, epsilon = self.params, ctx.epsilon
        model = ctx.model(p.model or ctx.attackers[0])
        bases_u8 = ctx.data.train_x[list(setup.base_indices)]
        bases = bases_u8.float() / 255
        labels = torch.full((len(bases),), setup.base_class, device=bases.device)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            before = torch.nn.functional.cross_entropy(model(bases), labels)
        adversarial = pgd(model, bases, labels, epsilon=epsilon, step=p.step, steps=p.steps,
                          generator=generator)
        with torch.no_grad():
            after = torch.nn.functional.cross_entropy(model(adversarial), labels)
        trigger = make_trigger(p.trigger, ctx.patch_size, ctx.data.image_shape[1])
        stamped = project(paste(adversarial, trigger), bases, epsilon)
        images = quantize(stamped, bases_u8, epsilon)
        # the losses are the adversarial model's on the bases, before and after PGD (it rises)
        return CraftResult(_poisons(setup, images), iterations=p.steps,
                           loss_initial=float(before), loss_final=float(after), trigger=trigger,
                           crafting_model=p.model)


def repair(goals: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """One re-pairing of the reference's Hidden Trigger Backdoor: the poisons' new goals.

    ``goals[i]`` is poison ``i``'s current goal (at first, the patched source image ``i``'s
    features) and ``features`` the poisons' current features. Over the distance matrix between
    goals (rows) and poisons (columns), the reference takes the smallest entry ``n`` times, each
    time giving poison ``c`` the goal of row ``r`` and masking that single entry. So a goal may
    serve several poisons, a poison picked more than once keeps its last (farthest) pick, and a
    poison never picked keeps its goal. This does the same in one pass: the ``n`` smallest
    entries in ascending order, the last pick per poison.
    """
    n = len(goals)
    distances = torch.cdist(goals, features)
    order = torch.topk(distances.flatten(), n, largest=False, sorted=True).indices
    rows, cols = order // distances.shape[1], order % distances.shape[1]
    last = torch.full((distances.shape[1],), -1, dtype=torch.long, device=goals.device)
    last = last.scatter_reduce(0, cols, torch.arange(n, device=goals.device), reduce="amax")
    picked = last >= 0  # as a mask for torch.where, not an index: no read of the device
    return torch.where(picked[:, None], goals[rows[last.clamp_min(0)]], goals)


@ATTACKS.register("hidden_trigger_backdoor")
class HiddenTriggerBackdoor(Attack):
    @dataclass(frozen=True)
    class Params:
        iterations: int = 5000
        lr: float = 0.001
        decay: float | None = None  # None: the reference's for the data set (see the docstring)
        decay_every: int | None = None
        stop_below: float = 10.0
        trigger: TriggerConfig = field(
            default_factory=lambda: TriggerConfig(kind="reference", name="htbd", offset=5))

        def validate(self, path: str) -> None:
            if self.iterations < 1 or (self.decay_every or 1) < 1 or self.lr <= 0:
                raise ConfigError(path, "iterations and decay_every must be ≥ 1, lr > 0")
            if self.decay is not None and not 0 < self.decay <= 1:
                raise ConfigError(f"{path}.decay", f"must be in (0, 1], got {self.decay}")

        def schedule(self, dataset: str) -> tuple[float, int]:
            """``(decay, decay_every)``: the reference's ×0.5 every 1,000 iterations on
            Tiny-ImageNet, ×0.95 every 2,000 otherwise, unless the config sets them."""
            tiny = dataset == "tinyimagenet"
            return (self.decay if self.decay is not None else (0.5 if tiny else 0.95),
                    self.decay_every or (1000 if tiny else 2000))

    def craft(self, ctx: CraftingContext, setup: Setup, seed: int, index: int) -> CraftResult:
        p, epsilon = self.params, ctx.epsilon
        model = ctx.model(ctx.attackers[0])
        bases_u8 = ctx.data.train_x[list(setup.base_indices)]
        bases = bases_u8.float() / 255
        trigger = make_trigger(p.trigger, ctx.patch_size, ctx.data.image_shape[1])
        generator = torch.Generator().manual_seed(seed)
        pool = torch.nonzero(ctx.data.train_y.cpu() == setup.target_class).flatten()
        chosen = pool[torch.randperm(len(pool), generator=generator)[:len(bases)]]
        sources = paste(ctx.data.train_x[chosen.to(bases_u8.device)], trigger).float() / 255
        with torch.no_grad():
            goals = [model.features(sources)]  # the current goal of each poison

        def re_pair(x: torch.Tensor, stopped: torch.Tensor) -> None:
            with torch.no_grad():  # once the descent has stopped, the goals stay
                goals[0] = torch.where(stopped, goals[0], repair(goals[0], model.features(x)))

        def objective(x: torch.Tensor) -> torch.Tensor:
            return (model.features(x) - goals[0]).pow(2).sum(dim=1)

        decay, decay_every = p.schedule(ctx.dataset_name)
        out = scheduled_descend(objective, bases, bases, epsilon, iterations=p.iterations,
                                lr=p.lr, decay=decay, decay_every=decay_every,
                                stop_below=p.stop_below, before_step=re_pair)
        images = quantize(out.images, bases_u8, epsilon)
        return CraftResult(_poisons(setup, images), iterations=out.iterations,
                           loss_initial=float(out.loss_initial.sum()),
                           loss_final=float(out.loss_final.sum()), trigger=trigger)
