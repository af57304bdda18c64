"""Dirty-label backdoors of the "Pick your Poison" line of work: BadNets, Blend and WaNet.

Each poisons ``poisons`` training images of other classes: it stamps the trigger on them and
relabels them as the attacker's target class. In a trial that class is the setup's *base class*
(the class the benchmark's attacks push predictions toward), so a trial's rows read the same for
every attack: success means the triggered target image is classified as the base class, and the
attack success rate counts triggered test images classified as it.

The poisons replace their source images in the victim's training set, which keeps its size.
Sources are drawn, with the trial's crafting seed, from the images the victim would have trained
on without an attack (:meth:`raypoison.trial.context.TrialContext.training_pool`). These poisons are not
bounded by ε; the checks make sure of their count, labels and sources instead.

``view`` says where the trigger goes relative to the victim's training augmentation:

- ``fixed`` (the default, as the authors' code of "Pick your Poison" makes its backdoors): when
  the victims' recipe augments, each source is first cropped and flipped once (a view drawn with
  the trial's crafting seed, as the recipe's augmentation would draw it), the trigger is applied
  to that view, and the victims train on the result as stored, never augmenting it again. The
  trigger so sits at its place in every epoch, as it does in the test images. (That code caches
  each poisoned sample the first time its training transform runs and returns the cached image
  in every later epoch.)
- ``augmented`` (this project's form before protocol 3): the trigger is applied to the source
  as it is, and the poison is augmented in every epoch like every other image, so a crop moves
  the patch or cuts it off (a 3×3 corner patch is wholly gone in about 40% of the views of a
  4-pixel crop). On the 49,000-image ResNet-18 run of ``configs/pyp-cifar10-jpeg-resnet-cpu.yaml``
  this planted no backdoor even with 1,500 poisons.

WaNet is the warping trigger alone: its "noise mode" (extra randomly warped images that keep
their labels, which makes the backdoor harder to find) is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from raypoison.attacks.base import Attack, CraftResult, Poisons
from raypoison.attacks.context import CraftingContext
from raypoison.attacks.registry import ATTACKS
from raypoison.data.augment import random_crop_flip
from raypoison.data.setups import Setup
from raypoison.data.triggers import TriggerConfig, make_trigger, paste
from raypoison.errors import ConfigError


class DirtyLabelBackdoor(Attack):
    relabels = True
    uses_attacker = False

    @classmethod
    def poison_count(cls, params: Any, scenario: Any) -> int:
        return params.poisons

    @classmethod
    def with_poison_count(cls, params: Any, count: int) -> Any:
        return replace(params, poisons=count)

    @classmethod
    def scenario_problem(cls, params: Any, scenario: Any) -> str | None:
        """What the data set's description already rules out, so that a config no trial can run
        is refused before the run rather than failing every trial: more poisons than the
        training set has images outside the target class (an upper bound), or a patch that does
        not fit the images; or a stored view the victims' augmentation would not draw."""
        from raypoison.data import DATASETS

        recipe = scenario.training_recipe
        if params.view == "fixed" and recipe.augment and recipe.augmentation != "crop_flip":
            return (f"view: fixed stores one crop-and-flip view of each poison; the victims' "
                    f"recipe augments with {recipe.augmentation!r} (use view: augmented)")

        info = DATASETS.get(scenario.dataset.name).describe(scenario.dataset.params)
        if info is None:
            return None
        per_class = scenario.train_per_class
        if per_class is not None:
            outside = per_class * (info.num_classes - 1)
        elif info.train_size is not None:
            outside = info.train_size - info.min_train_per_class
        else:
            outside = None
        if outside is not None and params.poisons > outside:
            return (f"poisons: {params.poisons}, but the training set has at most {outside} "
                    "images outside the target class")
        trigger = params.trigger
        if trigger.style == "patch" and info.image_size is not None:
            side = trigger.size if trigger.size is not None else scenario.patch_size
            if side + trigger.offset > info.image_size:
                return (f"trigger: a {side} px patch {trigger.offset} px from the corner does not "
                        f"fit the data set's {info.image_size}x{info.image_size} images")
        return None

    def craft(self, ctx: CraftingContext, setup: Setup, seed: int, index: int) -> CraftResult:
        p = self.params
        pool = ctx.training_pool(setup, index)
        candidates = pool[ctx.train_labels[pool] != setup.base_class]
        if p.poisons > len(candidates):
            raise ValueError(f"{p.poisons} poisons, but the training set has only "
                             f"{len(candidates)} images outside the target class")
        rng = np.random.default_rng([seed, index])
        chosen = np.sort(rng.choice(candidates, size=p.poisons, replace=False))
        trigger = make_trigger(p.trigger, ctx.patch_size, ctx.data.image_shape[1])
        sources = ctx.data.train_x[chosen.tolist()] if len(chosen) else ctx.data.train_x[:0]
        fixed = p.view == "fixed" and ctx.training_recipe.augment
        if fixed:
            generator = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
            sources = random_crop_flip(sources, generator)
        images = paste(sources, trigger)
        poisons = Poisons(images, tuple(int(i) for i in chosen),
                          (setup.base_class,) * len(chosen), setup.target_index,
                          augment=not fixed)
        return CraftResult(poisons, trigger=trigger)


@dataclass(frozen=True)
class _Params:
    poisons: int = 50
    view: Literal["fixed", "augmented"] = "fixed"  # see the module docstring


def _validate(params, path: str, style: str) -> None:
    if params.poisons < 0:
        raise ConfigError(f"{path}.poisons", f"must be ≥ 0, got {params.poisons}")
    if params.trigger.style != style:
        raise ConfigError(f"{path}.trigger.style", f"this attack's trigger style is {style!r}, "
                          f"got {params.trigger.style!r}")


@ATTACKS.register("badnets")
class BadNets(DirtyLabelBackdoor):
    """A patch (by default a checkerboard of the scenario's ``patch_size``) at a corner."""

    @dataclass(frozen=True)
    class Params(_Params):
        trigger: TriggerConfig = field(default_factory=lambda: TriggerConfig(kind="checkerboard"))

        def validate(self, path: str) -> None:
            _validate(self, path, "patch")


@ATTACKS.register("blend")
class Blend(DirtyLabelBackdoor):
    """A full-size pattern (by default seeded uniform noise) blended in with weight ``alpha``."""

    @dataclass(frozen=True)
    class Params(_Params):
        trigger: TriggerConfig = field(default_factory=lambda: TriggerConfig(style="blend"))

        def validate(self, path: str) -> None:
            _validate(self, path, "blend")


@ATTACKS.register("wanet")
class WaNet(DirtyLabelBackdoor):
    """A smooth warp of the whole image (WaNet's k = 4, s = 0.5 by default)."""

    @dataclass(frozen=True)
    class Params(_Params):
        trigger: TriggerConfig = field(default_factory=lambda: TriggerConfig(style="warp"))

        def validate(self, path: str) -> None:
            _validate(self, path, "warp")
