"""Backdoor triggers: small patches made deterministically by the project, or read from a file,
and where they go on an image.

A trigger is a uint8 ``[3, size, size]`` patch; its placement is a corner and an offset in pixels
from that corner. The same :func:`paste` stamps poisons and the images a trial evaluates, so both
see the trigger at the same pixels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from raypoison.config import optional_path
from raypoison.errors import ConfigError, DataError

Corner = Literal["bottom-right", "bottom-left", "top-right", "top-left"]


@dataclass(frozen=True)
class TriggerConfig:
    """``kind``: ``random`` (seeded uniform colours per pixel), ``checkerboard`` or ``file``.
    ``size`` None takes the scenario's ``patch_size``."""

    kind: Literal["random", "checkerboard", "file"] = "random"
    seed: int = 0
    path: str | None = field(default=None, metadata={"parse": optional_path})
    size: int | None = None
    corner: Corner = "bottom-right"
    offset: int = 0

    def validate(self, path: str) -> None:
        if self.kind == "file" and self.path is None:
            raise ConfigError(f"{path}.path", "a 'file' trigger needs a path")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"{path}.size", f"must be ≥ 1, got {self.size}")
        if self.offset < 0:
            raise ConfigError(f"{path}.offset", f"must be ≥ 0, got {self.offset}")


@dataclass(frozen=True)
class Trigger:
    pattern: torch.Tensor  # uint8 [3, s, s]
    corner: str
    offset: int
    description: str  # JSON of what made it, for the rows

    def region(self, height: int, width: int) -> tuple[slice, slice]:
        s = self.pattern.shape[-1]
        top = self.offset if self.corner.startswith("top") else height - s - self.offset
        left = self.offset if self.corner.endswith("left") else width - s - self.offset
        if top < 0 or left < 0:
            raise ValueError(f"a {s}x{s} trigger {self.offset} px from the {self.corner} corner "
                             f"does not fit a {height}x{width} image")
        return slice(top, top + s), slice(left, left + s)


def make_trigger(cfg: TriggerConfig, patch_size: int) -> Trigger:
    size = cfg.size or patch_size
    if cfg.kind == "random":
        g = torch.Generator().manual_seed(cfg.seed)
        pattern = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.int64)
    elif cfg.kind == "checkerboard":
        cells = (torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2
        pattern = (cells * 255).expand(3, size, size)
    else:
        try:
            with Image.open(cfg.path) as image:
                array = np.asarray(image.convert("RGB"), dtype=np.float32)
        except Exception as err:
            raise DataError(f"{cfg.path}: not a readable trigger image ({err})") from None
        source = torch.from_numpy(array).permute(2, 0, 1)[None]
        pattern = F.interpolate(source, size=(size, size), mode="bilinear", align_corners=False,
                                antialias=True)[0].round().clamp(0, 255)
    description = json.dumps({**asdict(cfg), "size": size}, sort_keys=True)
    return Trigger(pattern.to(torch.uint8).contiguous(), cfg.corner, cfg.offset, description)


def paste(images: torch.Tensor, trigger: Trigger) -> torch.Tensor:
    """A copy of uint8 (or [0, 1] float) ``images`` ``[N, C, H, W]`` with the trigger stamped."""
    out = images.clone()
    rows, cols = trigger.region(*images.shape[-2:])
    pattern = trigger.pattern.to(images.device)
    out[..., rows, cols] = pattern if images.dtype == torch.uint8 else pattern.float() / 255
    return out
