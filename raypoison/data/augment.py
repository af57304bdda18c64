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


def draw_crop_flip(n: int, generator: torch.Generator, padding: int = 4):
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
    dy, dx, flip = dy.to(device), dx.to(device), flip.to(device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
    cols = torch.arange(w, device=device)
    cols = torch.where(flip[:, None], cols.flip(0), cols)  # a flipped crop reads columns backwards
    cols = (dx[:, None] + cols)[:, None, None, :]
    batch = torch.arange(b, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    return apply_crop_flip(x, *draw_crop_flip(len(x), generator, padding), padding)


def view_index(dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, padding: int = 4):
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
