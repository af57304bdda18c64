"""Batched, seeded augmentation on the device: random crop with zero padding and horizontal flip.

The protocol's augmentation (torchvision's ``RandomCrop(size, padding=4)`` and
``RandomHorizontalFlip``), done for a whole batch with tensor indexing instead of per-image PIL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """``x``: float ``[B, C, H, W]``. Random numbers come from ``generator`` (a CPU generator)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(0), cols)  # a flipped crop reads columns backwards
    cols = (dx[:, None] + cols)[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]
