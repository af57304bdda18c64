"""Backdoor triggers: what the project stamps on poisons and on the images a trial evaluates.

Three styles, each deterministic from its config:

- ``patch`` (BadNets and the benchmark's backdoors): a uint8 ``[3, size, size]`` patch replacing
  the pixels at a corner and an offset from it; with ``opacity`` below 1 it is mixed into them
  instead, ``(1 - opacity) x + opacity p`` over the patch's pixels only (the "Pick your Poison"
  group's BadNets: its image mark at 3/32 of the side, top-left, opacity 0.2);
- ``blend`` (Blend): the image mixed with a full-size pattern, ``(1 - alpha) x + alpha p``;
- ``warp`` (WaNet): a smooth, seeded warping field — a ``grid x grid`` random flow in [-1, 1],
  divided by its mean magnitude, upsampled bicubically, scaled by ``strength / image size`` in
  grid_sample's [-1, 1] coordinates (WaNet's ``k`` and ``s``) — applied with bilinear sampling.

The pattern of ``patch`` and ``blend`` comes from ``kind``: ``random`` (seeded uniform colours per
pixel), ``checkerboard``, ``file`` (an image resized to the pattern's size) or ``reference``
(the benchmark's own trigger images, shipped in ``raypoison/assets/triggers/`` under their MIT
licence: ``name`` ``clbd`` or ``htbd``). Images are resized as the reference does, with Pillow's
bilinear filter (torchvision's ``Resize`` on a PIL image). The same
:func:`paste` stamps poisons and evaluation images, so both see the very same trigger.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from raypoison.core.schema import optional_path
from raypoison.errors import ConfigError, DataError

Corner = Literal["bottom-right", "bottom-left", "top-right", "top-left"]


@dataclass(frozen=True)
class TriggerConfig:
    """``size`` None takes the scenario's ``patch_size`` (patches only)."""

    kind: Literal["random", "checkerboard", "file", "reference"] = "random"
    seed: int = 0
    path: str | None = field(default=None, metadata={"parse": optional_path})
    name: Literal["clbd", "htbd"] = "clbd"  # kind ``reference``: which of the benchmark's images
    size: int | None = None
    corner: Corner = "bottom-right"
    offset: int = 0
    style: Literal["patch", "blend", "warp"] = "patch"
    alpha: float = 0.2  # blend: weight of the pattern
    opacity: float = 1.0  # patch: weight of the mark over the pixels it covers (1 replaces them)
    strength: float = 0.5  # warp: WaNet's s, the field's scale
    grid: int = 4  # warp: control points per side of the random flow

    def validate(self, path: str) -> None:
        if self.kind == "file" and self.path is None:
            raise ConfigError(f"{path}.path", "a 'file' trigger needs a path")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"{path}.size", f"must be ≥ 1, got {self.size}")
        if self.offset < 0:
            raise ConfigError(f"{path}.offset", f"must be ≥ 0, got {self.offset}")
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"{path}.alpha", f"must be in (0, 1], got {self.alpha}")
        if not 0 < self.opacity <= 1:
            raise ConfigError(f"{path}.opacity", f"must be in (0, 1], got {self.opacity}")
        if self.opacity != 1 and self.style != "patch":
            raise ConfigError(f"{path}.opacity", f"is a patch's; a {self.style} trigger has "
                              + ("its own weight, alpha" if self.style == "blend" else "none"))
        if self.strength <= 0:
            raise ConfigError(f"{path}.strength", f"must be > 0, got {self.strength}")
        if self.grid < 2:
            raise ConfigError(f"{path}.grid", f"must be ≥ 2, got {self.grid}")


class Trigger:
    """Something stamped on images: :meth:`apply` returns a stamped copy, ``description`` is the
    JSON of what made it (recorded in the rows)."""

    description: str

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255 if images.dtype == torch.uint8 else images


def _like(result: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return (result * 255).round_().clamp_(0, 255).to(torch.uint8)
    return result


@dataclass(frozen=True)
class PatchTrigger(Trigger):
    pattern: torch.Tensor  # uint8 [3, s, s]
    corner: str
    offset: int
    description: str
    at: tuple[int, int] | None = None  # (top, left) in pixels, overriding corner and offset
    opacity: float = 1.0  # below 1: mixed into the pixels it covers rather than replacing them

    def region(self, height: int, width: int) -> tuple[slice, slice]:
        s = self.pattern.shape[-1]
        top = self.offset if self.corner.startswith("top") else height - s - self.offset
        left = self.offset if self.corner.endswith("left") else width - s - self.offset
        if self.at is not None:
            top, left = self.at
        if top + s > height or left + s > width:
            raise ValueError(f"a {s}x{s} trigger at row {top}, column {left} does not fit a "
                             f"{height}x{width} image")
        if top < 0 or left < 0:
            raise ValueError(f"a {s}x{s} trigger {self.offset} px from the {self.corner} corner "
                             f"does not fit a {height}x{width} image")
        return slice(top, top + s), slice(left, left + s)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        rows, cols = self.region(*images.shape[-2:])
        pattern = self.pattern.to(images.device)
        if self.opacity == 1:
            out[..., rows, cols] = pattern if images.dtype == torch.uint8 else pattern.float() / 255
            return out
        under = _as_float(images[..., rows, cols])
        mixed = (1 - self.opacity) * under + self.opacity * (pattern.float() / 255)
        out[..., rows, cols] = _like(mixed, images)
        return out


@dataclass(frozen=True)
class BlendTrigger(Trigger):
    pattern: torch.Tensor  # uint8 [3, H, W]
    alpha: float
    description: str

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        pattern = self.pattern.to(images.device).float() / 255
        if pattern.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"a {tuple(pattern.shape[-2:])} blend pattern does not match "
                             f"{tuple(images.shape[-2:])} images")
        return _like((1 - self.alpha) * _as_float(images) + self.alpha * pattern, images)


@dataclass(frozen=True)
class WarpTrigger(Trigger):
    grid: torch.Tensor  # float [1, H, W, 2]: the sampling grid of F.grid_sample
    description: str

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        grid = self.grid.to(images.device)
        if grid.shape[1:3] != images.shape[-2:]:
            raise ValueError(f"a {tuple(grid.shape[1:3])} warp does not match "
                             f"{tuple(images.shape[-2:])} images")
        x = _as_float(images)
        warped = F.grid_sample(x, grid.expand(len(x), -1, -1, -1), mode="bilinear",
                               padding_mode="border", align_corners=True)
        return _like(warped.clamp(0, 1), images)


def _pattern(cfg: TriggerConfig, height: int, width: int) -> torch.Tensor:
    if cfg.kind == "random":
        g = torch.Generator().manual_seed(cfg.seed)
        return torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.int64)
    if cfg.kind == "checkerboard":
        cells = (torch.arange(height)[:, None] + torch.arange(width)[None, :]) % 2
        return (cells * 255).expand(3, height, width)
    path = reference_trigger_path(cfg.name) if cfg.kind == "reference" else cfg.path
    assert path is not None  # TriggerConfig.validate: an image trigger names its file
    try:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(resized, dtype=np.uint8)
    except Exception as err:
        raise DataError(f"{path}: not a readable trigger image ({err})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).long()


def reference_trigger_path(name: str) -> Path:
    """The shipped copy of the benchmark's trigger image ``name`` (``clbd`` or ``htbd``)."""
    return Path(__file__).parent.parent / "assets" / "triggers" / f"{name}.png"


def _warp_grid(cfg: TriggerConfig, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(cfg.seed)
    flow = torch.rand(1, 2, cfg.grid, cfg.grid, generator=g) * 2 - 1
    flow = flow / flow.abs().mean()
    flow = F.interpolate(flow, size=(size, size), mode="bicubic", align_corners=True)
    flow = flow.permute(0, 2, 3, 1)
    axis = torch.linspace(-1, 1, size)
    identity = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1)[None].flip(-1)
    return (identity + cfg.strength * flow / size).clamp(-1, 1)


def make_trigger(cfg: TriggerConfig, patch_size: int, image_size: int | None = None) -> Trigger:
    """The trigger ``cfg`` describes; ``image_size`` (square images) is needed by blend and warp."""
    if cfg.style == "patch":
        size = cfg.size or patch_size
        pattern = _pattern(cfg, size, size).to(torch.uint8).contiguous()
        description = json.dumps({**_described(cfg), "size": size}, sort_keys=True)
        return PatchTrigger(pattern, cfg.corner, cfg.offset, description, opacity=cfg.opacity)
    if image_size is None:
        raise ValueError(f"a {cfg.style} trigger needs the image size")
    description = json.dumps({**_described(cfg), "image_size": image_size}, sort_keys=True)
    if cfg.style == "blend":
        pattern = _pattern(cfg, image_size, image_size).to(torch.uint8).contiguous()
        return BlendTrigger(pattern, cfg.alpha, description)
    return WarpTrigger(_warp_grid(cfg, image_size), description)


def _described(cfg: TriggerConfig) -> dict:
    """The fields that shape this style of trigger (a patch's description is what it was before
    blend and warp existed, so its rows stay comparable; an opaque patch's, before ``opacity``)."""
    plain = asdict(cfg)
    if cfg.style != "patch" or cfg.opacity == 1:
        plain.pop("opacity")
    if cfg.kind != "reference":
        plain.pop("name")  # descriptions of the other kinds are what they were before it existed
    style_fields = {"patch": (), "blend": ("style", "alpha"), "warp": ("style", "strength", "grid")}
    for name in ("style", "alpha", "strength", "grid"):
        if name not in style_fields[cfg.style]:
            plain.pop(name)
    if cfg.style == "warp":
        for name in ("kind", "path", "size", "corner", "offset"):
            plain.pop(name)
    elif cfg.style == "blend":
        for name in ("size", "corner", "offset"):
            plain.pop(name)
    return plain


def paste(images: torch.Tensor, trigger: Trigger) -> torch.Tensor:
    """A copy of uint8 (or ``[0, 1]`` float) ``images`` ``[N, C, H, W]`` with the trigger applied."""
    return trigger.apply(images)
