"""The device a Ray worker or task computes on: the one Ray gave it, not whatever PyTorch sees.

Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES`` as it is for a process that asked for no GPU (it used to
blank it), so on a GPU node a CPU worker (``gpus_per_worker: 0``) would see every GPU and, asking
PyTorch, train on the first one, outside any memory share. Here a process computes on CUDA only
when Ray assigned it a GPU (a share of one included). Where Ray assigned one but PyTorch sees no
CUDA (a CPU-only build, a driver older than the build's CUDA, or logical GPUs declared with
``--num-gpus`` on a machine without one, as the tests do), it computes on the CPU and says so in
a warning and in what its worker reports to the run's manifest.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

log = logging.getLogger("raypoison")


def assigned_device() -> str:
    """``"cuda"`` when Ray assigned this process a GPU and PyTorch can use it, else ``"cpu"``."""
    import torch

    gpus = ray.get_gpu_ids()
    if not gpus:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    log.warning("Ray assigned GPU %s (CUDA_VISIBLE_DEVICES=%s) but PyTorch %s sees no CUDA "
                "device (built for CUDA %s): computing on the CPU", gpus,
                os.environ.get("CUDA_VISIBLE_DEVICES"), torch.__version__, torch.version.cuda)
    return "cpu"


def describe_device(device: str) -> dict[str, Any]:
    """What a worker reports of its device: the GPUs Ray assigned it and, on CUDA, the GPU's
    name (rows say only ``cuda``; the manifest says which)."""
    import torch

    out: dict[str, Any] = {"device": device, "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    if device == "cuda":
        out["gpu_name"] = torch.cuda.get_device_name()
    return out
