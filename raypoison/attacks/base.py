"""The shape of an attack: declared parameters, and ``craft`` that returns stored poisons."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from raypoison.attacks.context import CraftingContext
from raypoison.core.registry import NoParams
from raypoison.data.setups import Setup
from raypoison.data.triggers import Trigger
from raypoison.models.base import ImageClassifier


@dataclass
class Poisons:
    """Poisons as stored and trained on: uint8 images that replace the setup's bases."""

    images: torch.Tensor  # uint8 [B, C, H, W]
    base_indices: tuple[int, ...]
    labels: tuple[int, ...]
    target_index: int
    target_image: torch.Tensor | None = None  # uint8 [C, H, W], when the poisons carry it
    # False: the victims train on these images as stored, never augmenting them (each is one
    # augmented view drawn when it was made, as the Pick your Poison code makes its backdoors)
    augment: bool = True


@dataclass
class CraftResult:
    poisons: Poisons | None  # None: the attack trains and evaluates nothing (``noop``)
    iterations: int = 0
    loss_initial: float | None = None
    loss_final: float | None = None
    loss_rose: bool | None = None  # whether a poison's loss rose while crafting (where known)
    trigger: Trigger | None = None  # backdoors: pasted on the target (and ASR images) at test
    crafted_on: tuple[str, ...] | None = None  # the models, when not all the scenario's attackers
    # what the poisons were crafted on, for the row's ``crafting_model`` (e.g. a model trained
    # for this trial alone); None: the models of ``crafted_on``
    crafting_model: str | None = None


class Attack:
    """An attack: ``craft`` turns a trial's setup into poisons (and a trigger, for backdoors).

    It sees the trial through :class:`CraftingContext` only. The class methods are checked when a
    config is loaded, before anything runs; their ``scenario`` is a
    :class:`raypoison.config.suite.ScenarioConfig` (typed loosely: attacks sit below the config).
    """

    name: ClassVar[str]
    needs_models: ClassVar[bool] = True  # False: the trial loads no model and trains nothing
    # True: poisons are training images of other classes, relabelled as the base class and not
    # bounded by ε (dirty-label backdoors); False: they replace the setup's bases within ε
    relabels: ClassVar[bool] = False
    uses_attacker: ClassVar[bool] = True  # crafts on the scenario's attacker model
    # True: accepts a scenario whose ``attacker`` lists several models (see crafting_models)
    crafts_on_several: ClassVar[bool] = False
    # uint8 steps beyond ε that the checks accept: 1 for poisons written elsewhere through the
    # reference's truncating PIL conversion (its own check allows 9/255 for 8/255)
    rounding_slack: ClassVar[int] = 0

    Params: ClassVar[type[Any]] = NoParams  # each attack's frozen dataclass

    def __init__(self, params: Any):
        self.params = params

    @classmethod
    def required_models(cls, params: Any, scenario: Any) -> list[str]:
        """Models of the scenario the attack crafts on, beyond its attacker (checked up front)."""
        return []

    @classmethod
    def needs_attacker_weights(cls, params: Any) -> bool:
        """Whether the attacker models must have trained weights (a checkpoint or a pretrain)."""
        return cls.uses_attacker

    @classmethod
    def scenario_problem(cls, params: Any, scenario: Any) -> str | None:
        """Why these parameters cannot run in ``scenario``, or None (checked up front)."""
        return None

    @classmethod
    def poison_count(cls, params: Any, scenario: Any) -> int:
        """How many poisons a trial must have (the checks hold the attack to it)."""
        return scenario.budget

    @classmethod
    def with_poison_count(cls, params: Any, count: int) -> Any:
        """``params`` set to craft ``count`` poisons (the cost planner crafts a sample): an attack
        whose count is the scenario's budget crafts one poison per base of its setup, so its
        parameters stay as they are."""
        return params

    def craft(self, ctx: CraftingContext, setup: Setup, seed: int, index: int) -> CraftResult:
        """Poisons for trial ``index`` with ``setup``; ``seed`` drives any randomness."""
        return self.craft_many(ctx, [setup], [seed], [index])[0]

    def craft_many(self, ctx: CraftingContext, setups: list[Setup], seeds: list[int],
                    indices: list[int]) -> list[CraftResult]:
        """Several trials at once. Attacks that can optimize many trials' poisons in one batch
        against the same frozen model override this (the results match crafting one by one, up
        to floating-point noise); others craft one by one."""
        return [self.craft(ctx, s, seed, i) for s, seed, i in zip(setups, seeds, indices,
                                                                  strict=True)]


def crafting_models(ctx: CraftingContext) -> list[ImageClassifier]:
    """The frozen models the scenario's attacks craft on: one, or an ensemble."""
    return [ctx.model(name) for name in ctx.attackers]


def base_poisons(ctx: CraftingContext, setup: Setup) -> Poisons:
    """The unmodified bases, labelled with the base class: the starting point of every attack."""
    images = ctx.data.train_x[list(setup.base_indices)].clone()
    labels = (setup.base_class,) * len(setup.base_indices)
    return Poisons(images, setup.base_indices, labels, setup.target_index)


@dataclass
class TrialBatch:
    """The bases and targets of several trials stacked for one crafting batch."""

    bases_u8: torch.Tensor  # [sum of budgets, C, H, W]
    targets: torch.Tensor  # float [trials, C, H, W]
    counts: list[int]  # poisons per trial

    @classmethod
    def stack(cls, ctx: CraftingContext, setups: list[Setup]) -> TrialBatch:
        bases = torch.cat([ctx.data.train_x[list(s.base_indices)] for s in setups])
        targets = ctx.data.test_x[[s.target_index for s in setups]].float() / 255
        return cls(bases, targets, [len(s.base_indices) for s in setups])

    @property
    def bases(self) -> torch.Tensor:
        return self.bases_u8.float() / 255

    @property
    def group(self) -> torch.Tensor:
        """Trial number of each poison."""
        return torch.repeat_interleave(torch.arange(len(self.counts), device=self.bases_u8.device),
                                       torch.as_tensor(self.counts, device=self.bases_u8.device))

    def split(self, images: torch.Tensor, setups: list[Setup], *, iterations: int,
              loss_initial: torch.Tensor, loss_final: torch.Tensor) -> list[CraftResult]:
        """Per-trial results from the batch's uint8 images and per-trial losses."""
        out, start = [], 0
        for i, (setup, n) in enumerate(zip(setups, self.counts, strict=True)):
            out.append(CraftResult(
                Poisons(images[start:start + n], setup.base_indices,
                        (setup.base_class,) * n, setup.target_index),
                iterations=iterations, loss_initial=float(loss_initial[i]),
                loss_final=float(loss_final[i])))
            start += n
        return out
