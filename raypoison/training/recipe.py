"""A training recipe: optimizer, schedule, augmentation, precision, and adversarial training.

Declared beside the training loop that reads it (:mod:`raypoison.training.loop`); scenarios,
pre-training and the defenses that retrain a model all name one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from raypoison.core.schema import parse_fraction, positive
from raypoison.errors import ConfigError


@dataclass(frozen=True)
class RecipeConfig:
    """A training recipe. Defaults are the transfer recipe of the benchmark (PROTOCOL.md §1)."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 2e-4
    epochs: int = 40
    batch_size: int = 128
    milestones: tuple[int, ...] = (30,)
    gamma: float = 0.1
    augment: bool = True
    # "crop_flip": a random 4-pixel crop of the zero-padded image and a horizontal flip (the
    # protocol's victims). "shift": a continuous random shift of up to an eighth of the image
    # side, bilinear, filled with the model's normalization mean (zero in its normalized input,
    # as the reference pads), and a flip: the differentiable augmentation Witches' Brew's
    # reference trains its crafting models with. Networks trained whole only (transfer heads
    # train on a feature bank's crop-and-flip views).
    augmentation: Literal["crop_flip", "shift"] = "crop_flip"
    adversarial: AdversarialConfig | None = None
    # "step": lr × gamma at each milestone epoch (the protocol's recipes). "onecycle": lr rises
    # linearly to ``lr`` over the first ``warmup`` fraction of the batches, then falls linearly
    # towards 0 (it would reach 0 one batch after the last); milestones and gamma do not apply.
    # It reaches a given accuracy in far fewer epochs, which is what pre-training on a CPU needs.
    schedule: Literal["step", "onecycle"] = "step"
    warmup: float = 0.2
    # "bf16": forward and loss under bfloat16 autocast (and channels-last memory on CUDA), the
    # optimizer's weights and steps in float32, and feature banks computed under the same
    # autocast; on a CPU too (slow there: it exists so the path is tested). "auto": bf16 on CUDA,
    # float32 elsewhere (the fast choice for a GPU cluster; rows say the device). "float32", the
    # default, computes what the protocol's numbers were made with, so the benchmark configs
    # keep it until a GPU pilot shows bf16 moves no success rate (README, Config: `recipe`).
    precision: Literal["float32", "bf16", "auto"] = "float32"

    def __post_init__(self) -> None:
        # one-cycle has no milestones: left out (the step default) or empty is one recipe, with
        # one trial id and one cache key
        if self.schedule == "onecycle" and self.milestones == RecipeConfig.milestones:
            object.__setattr__(self, "milestones", ())

    def validate(self, path: str) -> None:
        positive(path, "lr", self.lr)
        positive(path, "epochs", self.epochs)
        positive(path, "batch_size", self.batch_size)
        positive(path, "weight_decay", self.weight_decay, allow_zero=True)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"{path}.momentum", f"must be in [0, 1), got {self.momentum}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"{path}.warmup", f"must be in [0, 1), got {self.warmup}")
        if self.augmentation != "crop_flip" and not self.augment:
            raise ConfigError(f"{path}.augmentation", "says how to augment, but augment is false")
        if self.schedule == "onecycle":
            if self.milestones:
                raise ConfigError(f"{path}.milestones",
                                  "applies to schedule 'step' only; schedule 'onecycle' has none")
            return
        positive(path, "gamma", self.gamma)
        for i, m in enumerate(self.milestones):
            if not 0 < m < self.epochs:
                raise ConfigError(
                    f"{path}.milestones[{i}]", f"must lie in (0, epochs={self.epochs}), got {m}"
                )
            if i and m <= self.milestones[i - 1]:
                raise ConfigError(f"{path}.milestones[{i}]",
                                  f"must come after the one before ({self.milestones[i - 1]}): "
                                  f"milestones are epochs in increasing order, got {m}")


@dataclass(frozen=True)
class AdversarialConfig:
    """PGD adversarial training: each batch is replaced by its PGD examples (Madry et al.)."""

    epsilon: float = field(default=8 / 255, metadata={"parse": parse_fraction})
    step: float = field(default=2 / 255, metadata={"parse": parse_fraction})
    steps: int = 7

    def validate(self, path: str) -> None:
        if not 0 < self.epsilon <= 1:
            raise ConfigError(f"{path}.epsilon", f"must be in (0, 1], got {self.epsilon}")
        positive(path, "step", self.step)
        positive(path, "steps", self.steps)


def uses_bf16(precision: str, device: object) -> bool:
    """Whether a recipe's ``precision`` computes under bf16 autocast on ``device`` (a
    ``torch.device`` or its name)."""
    kind = getattr(device, "type", str(device).split(":")[0])
    return precision == "bf16" or (precision == "auto" and kind == "cuda")


DEFAULT_RECIPES = {
    # PROTOCOL.md §1: a linear head on a frozen extractor, 40 epochs, lr 0.01 -> 0.001 at 30
    "transfer": RecipeConfig(),
    # not fixed by the protocol: the transfer recipe with every layer trainable
    "finetune": RecipeConfig(),
    # PROTOCOL.md §1: 200 epochs, lr 0.1, x0.1 at epochs 100 and 150
    "scratch": RecipeConfig(lr=0.1, epochs=200, milestones=(100, 150)),
}
