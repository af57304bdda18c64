"""The devices a plan is timed on: a built-in table of published rates and the measured figures of
a calibration file (``raypoison plan --calibrate NAME`` writes one from timed steps here;
``benchmarks/gpu_check.py`` writes one on a GPU).

Time is ``FLOPs / rate + steps × seconds_per_step`` with the device's rate (float32 or bf16, by
the recipe) and a fixed cost per step (what dominates tiny steps: a linear head on a CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raypoison.config.suite import ModelConfig
from raypoison.errors import DataError
from raypoison.execution.cost import Count, Shape, fresh, random_data, train_step
from raypoison.models import to_device
from raypoison.training.flops import head_step_cost, rate_and_overhead
from raypoison.training.loop import train
from raypoison.training.recipe import RecipeConfig


@dataclass(frozen=True)
class Device:
    """A device's effective throughput: FLOP/s in float32 and bf16, and a fixed cost per step."""

    description: str
    float32: float
    bf16: float
    seconds_per_step: float = 0.0
    source: str = "published"
    kind: str = "gpu"  # "gpu": one device per GPU, shared by 1 / gpus_per_worker workers;
    # "cpu": the rate of one worker with cpus_per_worker threads

    def seconds(self, count: Count, precision: str = "float32") -> float:
        half = precision == "bf16" or (precision == "auto" and self.kind == "gpu")
        rate = self.bf16 if half else self.float32
        return count.flops / rate + count.steps * self.seconds_per_step


UTILIZATION = 0.3  # an assumption for small-image ResNets, until gpu_check measures it
STEP_SECONDS = 1e-3  # an assumption: Python and kernel launches per step, until measured
DEVICES = {
    # published dense peaks (NVIDIA data sheets): A100 SXM 19.5 TFLOP/s float32 (156 with TF32),
    # 312 bf16; H100 SXM 67 float32, 989 bf16; the H200 has the H100's compute
    "a100": Device("NVIDIA A100 SXM, 30% of published peak, 1 ms per step assumed",
                   19.5e12 * UTILIZATION, 312e12 * UTILIZATION, STEP_SECONDS),
    "h100": Device("NVIDIA H100 SXM, 30% of published peak, 1 ms per step assumed",
                   67e12 * UTILIZATION, 989e12 * UTILIZATION, STEP_SECONDS),
    "h200": Device("NVIDIA H200, 30% of the H100's published peak, 1 ms per step assumed",
                   67e12 * UTILIZATION, 989e12 * UTILIZATION, STEP_SECONDS),
}


def calibration_file(path: Path) -> dict[str, Any]:
    """A calibration file's JSON document, refused with what is wrong unless it is an object
    with a ``devices`` mapping (an absent file is an empty one: ``--calibrate`` creates it)."""
    if not path.exists():
        return {"devices": {}}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable calibration file ({type(err).__name__}: "
                        f"{str(err)[:120]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("devices", {}), dict):
        raise DataError(f"{path}: a calibration file is an object with a 'devices' mapping")
    doc.setdefault("devices", {})
    return doc


def _device(name: str, d: Any, where: Path) -> Device:
    """One measured device of a calibration file, its rates positive finite numbers."""
    if not isinstance(d, dict):
        raise DataError(f"{where}: device {name!r} must be a mapping")
    rates: dict[str, float] = {}
    for key, default in (("float32", None), ("bf16", d.get("float32")),
                         ("seconds_per_step", 0.0)):
        value = d.get(key, default)
        least = 0.0 if key == "seconds_per_step" else None  # rates > 0, the step's cost ≥ 0
        if (not isinstance(value, int | float) or isinstance(value, bool)
                or not math.isfinite(value)
                or (value < least if least is not None else value <= 0)):
            bound = "≥ 0" if least is not None else "> 0"
            raise DataError(f"{where}: device {name!r}: {key} must be a number {bound}, got "
                            f"{str(value)[:40]!r}")
        rates[key] = float(value)
    kind = d.get("kind", "gpu")
    if kind not in ("gpu", "cpu"):
        raise DataError(f"{where}: device {name!r}: kind must be 'gpu' or 'cpu', got "
                        f"{str(kind)[:40]!r}")
    return Device(str(d.get("description", name)), rates["float32"], rates["bf16"],
                  rates["seconds_per_step"], str(d.get("source", "measured")), kind)


def load_devices(calibration: str | Path | None) -> dict[str, Device]:
    """The built-in table, with the measured devices of a calibration file added or replaced."""
    devices = dict(DEVICES)
    if calibration is not None:
        path = Path(calibration)
        if not path.is_file():
            raise DataError(f"{path}: calibration file not found")
        for name, d in calibration_file(path)["devices"].items():
            devices[str(name)] = _device(str(name), d, path)
    return devices


def calibrate(cfg: ModelConfig, shape: Shape, threads: int, repeats: int = 7) -> Device:
    """This machine's float32 rate and cost per step, from timed real steps of ``cfg``: full
    training steps at batch 128 (FLOPs dominate) and head steps (the fixed cost dominates)."""
    torch.set_num_threads(threads)
    recipe = RecipeConfig(batch_size=128, epochs=1, milestones=())
    big_flops = train_step(cfg, shape, recipe, "all")
    model = to_device(fresh(cfg, shape), "cpu")  # as workers hold it (channels-last on a CPU)
    data = random_data(shape, -(-128 // shape.classes))
    x, y = data.train_x[:128], data.train_y[:128]
    for _ in range(3):  # warm up (the first steps of a process run far slower)
        train(model, x, y, recipe=recipe, seed=0, max_steps=1)
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        train(model, x, y, recipe=recipe, seed=0, max_steps=1)
        times.append(time.perf_counter() - tick)
    big = sorted(times)[len(times) // 2]  # the median step
    small_flops, small = head_step_cost(model.feature_dim, shape.classes, 128)
    rate, overhead = rate_and_overhead(big_flops, big, small_flops, small)
    return Device(f"one worker of this machine, {threads} thread(s), measured on {cfg.arch}",
                  rate, rate, overhead, source=f"measured {time.strftime('%Y-%m-%d')}", kind="cpu")


def write_calibration(path: str | Path, name: str, device: Device) -> None:
    target = Path(path)
    doc = calibration_file(target)
    doc["devices"][name] = dataclasses.asdict(device)
    target.write_text(json.dumps(doc, indent=2) + "\n")
