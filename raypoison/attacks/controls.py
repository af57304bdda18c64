"""Controls: ``none`` (the bases unchanged, so training and evaluation measure the baseline)
and ``noop`` (nothing at all: exercises the runner in scale tests and benchmarks)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from raypoison.attacks.base import Attack, CraftResult, base_poisons
from raypoison.attacks.context import CraftingContext
from raypoison.attacks.registry import ATTACKS
from raypoison.data.setups import Setup
from raypoison.data.triggers import TriggerConfig, make_trigger
from raypoison.errors import ConfigError


@ATTACKS.register("none")
class NoAttack(Attack):
    """The no-attack control: victims train on the clean bases; success is the base rate at which
    the target is classified as the base class anyway. With a ``trigger``, the trigger is pasted
    at test time as for a backdoor, so the control measures how often a trigger alone flips the
    prediction."""

    uses_attacker = False

    @dataclass(frozen=True)
    class Params:
        trigger: TriggerConfig | None = None

    def craft(self, ctx: CraftingContext, setup: Setup, seed: int, index: int) -> CraftResult:
        trigger = None
        if self.params.trigger is not None:
            trigger = make_trigger(self.params.trigger, ctx.patch_size,
                                   ctx.data.image_shape[1])
        return CraftResult(base_poisons(ctx, setup), trigger=trigger)


@ATTACKS.register("noop")
class Noop(Attack):
    """No poisons, no training, no evaluation; ``seconds`` simulates work. Rows carry the setup and
    timings, ``success`` stays empty. For measuring the runner, not for results."""

    needs_models = False
    uses_attacker = False

    @dataclass(frozen=True)
    class Params:
        seconds: float = 0.0

        def validate(self, path: str) -> None:
            if self.seconds < 0:
                raise ConfigError(f"{path}.seconds", f"must be ≥ 0, got {self.seconds}")

    def craft(self, ctx: CraftingContext, setup: Setup, seed: int, index: int) -> CraftResult:
        if self.params.seconds:
            time.sleep(self.params.seconds)
        return CraftResult(None)
