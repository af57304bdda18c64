"""FLOPs of running real code, counted as PyTorch dispatches its ops (no Ray: the planner and the
device check count the same way)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
