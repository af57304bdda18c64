"""Random draws reach the device through :func:`raypoison.core.host_copy.host_to_device`."""

from __future__ import annotations

import pytest
import torch

from raypoison.core import host_copy
from raypoison.core.host_copy import host_to_device
from raypoison.data.augment import apply_crop_flip, draw_crop_flip


def test_a_copy_to_the_cpu_is_the_tensor_itself():
    draws = torch.randint(0, 9, (128,))
    assert host_to_device(draws, "cpu") is draws
    host_copy.PINNED = False
    try:
        assert host_to_device(draws, torch.device("cpu")) is draws
    finally:
        host_copy.PINNED = True


def test_the_crop_draws_travel_as_one_tensor_and_keep_their_values():
    """Off the CPU the three draws go in one stacked copy; on the meta device (no values) that
    path still has to give each its shape and the flip its type."""
    generator = torch.Generator().manual_seed(0)
    dy, dx, flip = draw_crop_flip(4, generator)
    x = torch.rand(4, 3, 8, 8)
    on_cpu = apply_crop_flip(x, dy, dx, flip)
    meta = apply_crop_flip(x.to("meta"), dy, dx, flip)
    assert meta.shape == on_cpu.shape and meta.dtype == on_cpu.dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned copies need CUDA")
def test_a_pinned_copy_carries_the_same_values():
    draws = torch.randint(0, 162, (4096,))
    on_gpu = host_to_device(draws, "cuda")
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), draws)
