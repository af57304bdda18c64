"""Batched, seeded augmentation on the device: random crop with zero padding and horizontal flip.

The protocol's augmentation (torchvision's ``RandomCrop(size, padding=4)`` and
``RandomHorizontalFlip``), done for a whole batch with tensor indexing instead of per-image PIL.
A crop-and-flip is one of ``(2·padding+1)² · 2`` views (162 for padding 4); :func:`view_index`
numbers them, which lets a frozen extractor's features be computed once per view and looked up.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from raypoison.core.host_copy import host_to_device, host_to_device_together


def draw_crop_flip(n: int, generator: torch.Generator, padding: int = 4
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``(dy, dx, flip)`` for ``n`` images, from a CPU generator."""
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return dy, dx, flip


def apply_crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
                    padding: int = 4) -> torch.Tensor:
    """Crop each image of ``x`` ``[B, C, H, W]`` at its offset in the zero-padded image, then flip."""
    b, c, h, w = x.shape
    device = x.device
    if device.type != "cpu":  # one copy for the three draws
        dy, dx, flip = host_to_device_together([dy, dx, flip], device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
    cols = torch.arange(w, device=device)
    cols = torch.where(flip[:, None], cols.flip(0), cols)  # a flipped crop reads columns backwards
    cols = (dx[:, None] + cols)[:, None, None, :]
    batch = torch.arange(b, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    dy, dx, flip = draw_crop_flip(len(x), generator, padding)
    return apply_crop_flip(x, dy, dx, flip, padding)


def view_index(dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, padding: int = 4
               ) -> torch.Tensor:
    return (dy * (2 * padding + 1) + dx) * 2 + flip.long()


def identity_view(padding: int = 4) -> int:
    """The view that leaves an image as it is (centred crop, no flip)."""
    return int(view_index(torch.tensor(padding), torch.tensor(padding), torch.tensor(False),
                          padding))


def all_views(padding: int = 4) -> Iterator[tuple[int, int, bool]]:
    """Every ``(dy, dx, flip)`` in :func:`view_index` order."""
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            for flip in (False, True):
                yield dy, dx, flip


def draw_shift_flip(n: int, generator: torch.Generator) -> torch.Tensor:
    """Four uniform draws per image for :func:`apply_shift_flip` (x shift, y shift, flip, spare),
    from a CPU generator."""
    return torch.rand(n, 4, generator=generator)


def apply_shift_flip(x: torch.Tensor, draws: torch.Tensor, fill: torch.Tensor,
                     max_shift: float = 4.0) -> torch.Tensor:
    """Witches' Brew's differentiable augmentation: each image shifted by a continuous random
    offset of up to ``max_shift`` pixels on each axis (bilinear resampling) and flipped
    horizontally with probability ½; pixels shifted in from outside take the value ``fill``
    (``[1, C, 1, 1]``: the data set's mean, which is zero padding of the normalized image, as in
    the reference). Differentiable in ``x``.

    The grid is the identity with align_corners, where one pixel is ``2 / (size − 1)``; the
    flip negates the shifted x coordinates, so a flipped image is shifted the mirrored way.
    """
    b, _, h, w = x.shape
    draws = host_to_device(draws, x.device).to(x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    gx = xs.view(1, 1, w).expand(b, h, w) + ((draws[:, 0] - 0.5) * 2 * (2 * max_shift / (w - 1))
                                             ).view(b, 1, 1)
    gy = ys.view(1, h, 1).expand(b, h, w) + ((draws[:, 1] - 0.5) * 2 * (2 * max_shift / (h - 1))
                                             ).view(b, 1, 1)
    gx = torch.where((draws[:, 2] > 0.5).view(b, 1, 1), -gx, gx)
    grid = torch.stack([gx, gy], dim=-1)
    fill = fill.to(device=x.device, dtype=x.dtype)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=True) + fill
