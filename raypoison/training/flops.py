"""FLOPs of running real code, counted as PyTorch dispatches its ops, and the rate a device runs
them at (no Ray: the planner's ``--calibrate`` and the device check measure the same way)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class _FlopCount(TorchDispatchMode):
    """Every dispatched op's FLOPs by :data:`torch.utils.flop_counter.flop_registry` (the formulas
    of ``FlopCounterMode``), without its per-module tracking: that tracking's backward hooks break
    ``torch.autograd.grad`` on an input, which the attacks and PGD call."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def counted(fn: Callable[[], Any]) -> float:
    """The FLOPs of running ``fn`` (forward and backward ops, as PyTorch dispatches them)."""
    with _FlopCount() as counter:
        fn()
    return float(counter.total)


def head_step_cost(feature_dim: int, classes: int, batch_size: int, device: str = "cpu",
                   steps: int = 2000, warmup: int = 0) -> tuple[float, float]:
    """The FLOPs and the mean seconds of one SGD step of a linear head on random
    features: so little arithmetic that its time is the fixed cost of a step (Python, kernel
    launches) on ``device``."""
    head = torch.nn.Linear(feature_dim, classes).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
    feats = torch.randn(batch_size, feature_dim, device=device)
    labels = torch.randint(0, classes, (batch_size,), device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(head(feats), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    flops = counted(step)
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    tick = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return flops, (time.perf_counter() - tick) / steps


def rate_and_overhead(step_flops: float, step_seconds: float, head_flops: float,
                      head_seconds: float) -> tuple[float, float]:
    """A device's FLOP rate and fixed cost per step from a full training step (FLOPs dominate)
    and a head step (the fixed cost dominates): the rate from their differences, the overhead
    what the head step took beyond its arithmetic."""
    rate = (step_flops - head_flops) / max(step_seconds - head_seconds, 1e-9)
    return rate, max(head_seconds - head_flops / rate, 0.0)
