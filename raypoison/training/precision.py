"""The autocast a recipe's precision asks for, as one context (kept out of the recipe module,
which config parsing imports without PyTorch)."""

from __future__ import annotations

import contextlib

import torch


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` where ``enabled``; otherwise no context at all, which also
    lets float32 code run on devices autocast does not know (the ``meta`` device of the tests
    that prove a loop reads no device value)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
