"""The shape of an attack: declared parameters, and ``craft`` that returns stored poisons."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from raypoison.setups import Setup
    from raypoison.trial import TrialContext


@dataclass
class Poisons:
    """Poisons as stored and trained on: uint8 images that replace the setup's bases."""

    images: torch.Tensor  # uint8 [B, C, H, W]
    base_indices: tuple[int, ...]
    labels: tuple[int, ...]
    target_index: int
    target_image: torch.Tensor | None = None  # uint8 [C, H, W], when the poisons carry it


@dataclass
class CraftResult:
    poisons: Poisons | None  # None: the attack trains and evaluates nothing (``noop``)
    iterations: int = 0
    loss_initial: float | None = None
    loss_final: float | None = None


class Attack:
    name: ClassVar[str]
    needs_models: ClassVar[bool] = True  # False: the trial loads no model and trains nothing

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Any):
        self.params = params

    def craft(self, ctx: TrialContext, setup: Setup, seed: int, index: int) -> CraftResult:
        """Poisons for trial ``index`` with ``setup``; ``seed`` drives any randomness."""
        raise NotImplementedError


def base_poisons(ctx: TrialContext, setup: Setup) -> Poisons:
    """The unmodified bases, labelled with the base class: the starting point of every attack."""
    images = ctx.data.train_x[list(setup.base_indices)].clone()
    labels = (setup.base_class,) * len(setup.base_indices)
    return Poisons(images, setup.base_indices, labels, setup.target_index)
