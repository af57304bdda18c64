"""Features of a frozen extractor under every augmentation view, computed once and looked up.

In transfer mode the extractor never changes, so the features of a clean image under each of the
162 crop-and-flip views are the same in every epoch of every trial. A bank holds them for the
pool of clean images a scenario's trials draw from; a trial adds its poisons' views and trains the
head on looked-up features with the same random draws as on-the-fly augmentation. The result is
the same computation (up to floating-point), at a fraction of the cost: the extractor sees the pool
once per worker instead of every image in every epoch of every trial.

A victim that trains without augmentation only ever sees the unaugmented view, so its bank holds
that one view: 1/162 of the memory and of the extractor passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from raypoison.core.host_copy import host_to_device
from raypoison.data.augment import all_views, apply_crop_flip
from raypoison.models import ImageClassifier
from raypoison.training.precision import bf16_autocast


@torch.no_grad()
def view_features(model: ImageClassifier, images: torch.Tensor, padding: int = 4,
                  batch_size: int | None = None,
                  dtype: torch.dtype = torch.float32,
                  views: Sequence[int] | None = None, bf16: bool = False) -> torch.Tensor:
    """``[V, N, D]`` features of uint8 ``images`` under ``views`` (view numbers, default every
    view), in that order; ``bf16``: the extractor runs under bfloat16 autocast (the victims'
    recipe says ``precision: bf16``, or ``auto`` on CUDA), the bank stays ``dtype``.

    ``batch_size`` defaults to 1024 on a GPU and 256 on a CPU, where larger batches fall out of
    the caches: a quarter-width ResNet-18 in the default layout took 1.0 ms per image at 256 and
    1.6 ms at 1024 on the 2-core development machine.
    """
    if batch_size is None:
        batch_size = 1024 if images.is_cuda else 256
    model.eval()
    n = len(images)
    every = list(all_views(padding))
    chosen = [every[v] for v in views] if views is not None else every
    out = torch.empty(len(chosen), n, model.feature_dim, dtype=dtype, device=images.device)
    for v, (dy, dx, flip) in enumerate(chosen):
        for start in range(0, n, batch_size):
            x = images[start:start + batch_size].float().div_(255)
            m = len(x)
            x = apply_crop_flip(x, torch.full((m,), dy), torch.full((m,), dx),
                                torch.full((m,), flip), padding)
            with bf16_autocast(images.device, bf16):
                out[v, start:start + m] = model.features(x).to(dtype)
    return out


def decode_view(views: torch.Tensor, padding: int = 4
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dy, dx, flip)`` of view numbers (the inverse of :func:`view_index`)."""
    side = 2 * padding + 1
    return views // 2 // side, views // 2 % side, (views % 2).bool()


class TrainingFeatures:
    """The features of one trial's training set: rows of a shared pool bank, then its poisons.

    The poisons are few and new in every trial, so their features are computed when a batch
    needs them, under the view it drew: each poison passes the extractor once per epoch, as it
    would without a bank.

    ``pool_views`` lists the view numbers the pool holds, in its order, when it holds only some
    (see :func:`view_features`); training checks :attr:`holds_every_view` once, before its first
    batch, so lookups need no check of their own.

    A lookup reads no value from the device: which items of a batch are pool rows and which are
    poisons is decided on the host, from the host's index and view draws and a host copy of the
    row maps, and the device gets the resulting indices in one asynchronous copy. On a GPU a
    boolean mask or an ``any()`` would stop the host once per step until the queued kernels had
    run, several times a step of a head whose steps take microseconds.
    """

    def __init__(self, pool: torch.Tensor, pool_rows: torch.Tensor, extractor: ImageClassifier,
                 extra_images: torch.Tensor, padding: int = 4,
                 pool_views: Sequence[int] | None = None, bf16: bool = False):
        self.pool = pool  # [V, P, D], shared by trials; never copied
        self.pool_rows = pool_rows.cpu()  # [n_clean] rows of the pool, in training-set order
        self.extractor = extractor  # frozen, eval mode
        self.extra_images = extra_images  # uint8 [n_extra, C, H, W]
        self.padding = padding
        self.bf16 = bf16  # the poisons' features under the autocast the pool was made with
        self.view_rows: torch.Tensor | None = None  # view number -> pool row, -1 if absent
        if pool_views is not None:
            if len(pool_views) != pool.shape[0]:
                raise ValueError(f"the pool holds {pool.shape[0]} views, not {len(pool_views)}")
            self.view_rows = torch.full(((2 * padding + 1) ** 2 * 2,), -1, dtype=torch.long)
            self.view_rows[torch.as_tensor(list(pool_views))] = torch.arange(len(pool_views))

    @property
    def holds_every_view(self) -> bool:
        return self.view_rows is None

    def __len__(self) -> int:
        return len(self.pool_rows) + len(self.extra_images)

    def lookup(self, index: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Features ``[B, D]`` (float32, on the pool's device) of training-set items ``index``
        under ``views``. Both are best given on the CPU, as training draws them; device tensors
        are copied back first, which waits for the device."""
        index, views = index.cpu(), views.cpu()
        n_clean = len(self.pool_rows)
        is_extra = index >= n_clean
        clean_at = (~is_extra).nonzero().squeeze(1)
        extra_at = is_extra.nonzero().squeeze(1)
        clean_views = views[clean_at]
        view_rows = clean_views if self.view_rows is None else self.view_rows[clean_views]
        c, e = len(clean_at), len(extra_at)
        device = self.pool.device
        dy, dx, flip = decode_view(views[extra_at], self.padding)
        moved = host_to_device(torch.cat([view_rows, self.pool_rows[index[clean_at]], clean_at,
                                          extra_at, index[extra_at] - n_clean, dy, dx,
                                          flip.long()]), device)
        clean = self.pool[moved[:c], moved[c:2 * c]].float()
        if e == 0:
            return clean
        out = torch.empty(len(index), self.pool.shape[2], dtype=torch.float32, device=device)
        if c:
            out.index_copy_(0, moved[2 * c:3 * c], clean)
        extra_rows, dy, dx, flip = moved[3 * c:].view(5, e)[1:]
        images = self.extra_images[extra_rows].float().div_(255)
        with torch.no_grad(), bf16_autocast(images.device, self.bf16):
            extra = self.extractor.features(apply_crop_flip(images, dy, dx, flip.bool(),
                                                            self.padding))
        return out.index_copy_(0, moved[3 * c:3 * c + e], extra.float())
