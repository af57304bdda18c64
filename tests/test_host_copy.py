"""Random draws reach the device through :func:`raypoison.core.host_copy.host_to_device`."""

from __future__ import annotations

import pytest
import torch

from raypoison.core import host_copy
from raypoison.core.host_copy import host_to_device, host_to_device_together
from raypoison.data.augment import apply_crop_flip, draw_crop_flip


def test_a_copy_to_the_cpu_is_the_tensor_itself():
    draws = torch.randint(0, 9, (128,))
    assert host_to_device(draws, "cpu") is draws
    host_copy.PINNED = False
    try:
        assert host_to_device(draws, torch.device("cpu")) is draws
    finally:
        host_copy.PINNED = True


def test_draws_copied_together_keep_their_values_and_types():
    """Off the CPU the crop's three draws go in one stacked copy; the stacking itself runs here."""
    generator = torch.Generator().manual_seed(0)
    dy, dx, flip = draw_crop_flip(64, generator)
    together = host_to_device_together([dy, dx, flip], "cpu")
    assert [t.dtype for t in together] == [torch.int64, torch.int64, torch.bool]
    assert all(torch.equal(a, b) for a, b in zip(together, (dy, dx, flip), strict=True))
    assert flip.any() and not flip.all()  # both values of the flip went through
    # and apply_crop_flip's path off the CPU keeps shapes and types (the meta device: no values)
    x = torch.rand(4, 3, 8, 8)
    meta = apply_crop_flip(x.to("meta"), dy[:4], dx[:4], flip[:4])
    assert meta.shape == x.shape and meta.dtype == x.dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned copies need CUDA")
def test_a_pinned_copy_carries_the_same_values():
    draws = torch.randint(0, 162, (4096,))
    on_gpu = host_to_device(draws, "cuda")
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), draws)
    flips = torch.rand(4096) < 0.5
    dy, flip = host_to_device_together([draws, flips], "cuda")
    assert torch.equal(dy.cpu(), draws) and torch.equal(flip.cpu(), flips)
