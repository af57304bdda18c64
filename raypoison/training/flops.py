"""FLOPs of running real code, counted as PyTorch dispatches its ops, and the rate a device runs
them at (no Ray: the planner's ``--calibrate`` and the device check measure the same way)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import flop_registry


class _FlopCount(TorchDispatchMode):
    """Every dispatched op's FLOPs by :data:`torch.utils.flop_counter.flop_registry` (the formulas
    of ``FlopCounterMode``), without its per-module tracking: that tracking's backward hooks break
    ``torch.autograd.grad`` on an input, which the attacks and PGD call.

    With ``compute=False`` the counted ops (matrix products, convolutions and their backward) are
    not computed: their shapes come from the same op on meta tensors and their values are noise
    (:func:`_noise`), so a count takes the time of everything else (normalisation, activations,
    Python): a ResNet-18 step at batch 128 counted in 1.3 s instead of 7.6 on one CPU thread.
    The count is the same wherever which ops run does not depend on their values; the planner
    switches off the loops that stop on a computed value
    (:data:`raypoison.execution.cost.STOP_FIELDS`).
    """

    def __init__(self, compute: bool = True) -> None:
        super().__init__()
        self.total = 0
        self.compute = compute

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        kwargs = kwargs or {}
        formula = flop_registry.get(func._overloadpacket)
        if formula is None:
            return func(*args, **kwargs)
        computed = self.compute or "out" in kwargs
        out = func(*args, **kwargs) if computed else _shaped_noise(func, args, kwargs)
        self.total += formula(*args, **kwargs, out_val=out)
        return out


def _shaped_noise(func: Any, args: Any, kwargs: Any) -> Any:
    """``func``'s outputs, shaped and typed as it makes them, holding noise (strided as the meta
    kernel strides them: contiguous where a CPU kernel may return channels-last)."""
    device = next(t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))

    def meta(value: Any) -> Any:
        return value.to("meta") if isinstance(value, torch.Tensor) else value

    def filled(m: Any) -> Any:
        if not isinstance(m, torch.Tensor):
            return m
        out = torch.empty_strided(m.shape, m.stride(), dtype=m.dtype, device=device)
        if m.dtype.is_floating_point:
            out.copy_(_noise(m.numel(), device).view(m.shape))
        else:
            out.zero_()
        return out

    return tree_map(filled, func(*tree_map(meta, args), **tree_map(meta, kwargs)))


_NOISE: dict[torch.device, torch.Tensor] = {}


def _noise(n: int, device: torch.device) -> torch.Tensor:
    """``n`` normal numbers of standard deviation 0.1 (small, so that what is built from them
    stays finite), drawn once and reused: drawing them anew took as long as the rest of a step.
    The pool stays as large as the largest output counted (134 MB for a ResNet-18's first
    activations at batch 512)."""
    pool = _NOISE.get(device)
    if pool is None or pool.numel() < n:
        g = torch.Generator().manual_seed(0)
        pool = torch.randn(max(n, 1 << 20), generator=g).mul_(0.1).to(device)
        _NOISE[device] = pool
    return pool[:n]


def release_noise() -> None:
    """Free the pool of :func:`_noise` (the planner does at its end)."""
    _NOISE.clear()


def counted(fn: Callable[[], Any], *, compute: bool = True) -> float:
    """The FLOPs of running ``fn`` (forward and backward ops, as PyTorch dispatches them);
    ``compute=False`` skips the arithmetic of the counted ops (:class:`_FlopCount`)."""
    with _FlopCount(compute) as counter:
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
