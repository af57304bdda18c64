"""Copies of small CPU tensors (random draws) to the device without stopping the host.

Random draws come from CPU generators, so that a seed gives the same draws on every device. A
plain ``.to("cuda")`` from pageable memory waits for the copy, and with it for every kernel
queued before it: once per training step, the host could no longer queue the next step while
the GPU runs this one. Pinned memory lets the copy run asynchronously; PyTorch's pinned
allocator keeps the buffer until the copy is done. The values are the same either way.
"""

from __future__ import annotations

import torch

# off: plain blocking copies, as before (benchmarks/gpu_check.py measures what pinning saves)
PINNED = True


def host_to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` (on the CPU) on ``device``: on CUDA through pinned memory without waiting;
    elsewhere as ``.to(device)`` does (the same tensor where it already is)."""
    device = torch.device(device)
    if not PINNED or device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def host_to_device_together(tensors: list[torch.Tensor], device: torch.device | str
                            ) -> list[torch.Tensor]:
    """Several 1-D integer or bool CPU tensors of one length on ``device`` in one copy (each
    copy has its fixed cost), each with its own dtype again."""
    moved = host_to_device(torch.stack([t.long() for t in tensors]), device)
    return [m.to(t.dtype) for m, t in zip(moved.unbind(), tensors, strict=True)]
