"""The printed plan: per scenario and attack, FLOPs per trial by phase and the time they take on
a device; then the whole config on N devices (``raypoison plan``)."""

from __future__ import annotations

from dataclasses import dataclass

from raypoison.execution.cost import Cell, ScenarioCost
from raypoison.execution.device_rates import Device


def _flops(x: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x / 1e6:.3g} MFLOP"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h" if seconds >= 360 else f"{seconds:.3g} s"


@dataclass
class Totals:
    flops: float
    device_seconds: float
    workers: int


def _precision(phase: str, cell: Cell) -> str:
    """Crafting computes in float32 whatever the victims' recipe says (its steps are at the ε
    scale); the other phases in the recipe's precision."""
    return "float32" if phase == "craft" else cell.precision


def totals(plans: list[ScenarioCost], device: Device, workers: int) -> Totals:
    """All FLOPs and device-seconds: the cells, pre-training once, and per-worker costs (banks,
    cached test features) once per worker that runs the scenario."""
    flops, seconds = 0.0, 0.0
    for plan in plans:
        for phase, count in plan.shared.items():
            k = workers if phase in ("bank", "eval") else 1
            flops += count.flops * k
            seconds += device.seconds(count, plan.precision) * k
        for cell in plan.cells:
            for phase, count in cell.per_trial.items():
                flops += count.flops * cell.trials
                seconds += device.seconds(count, _precision(phase, cell)) * cell.trials
    return Totals(flops, seconds, workers)


def render(plans: list[ScenarioCost], device_name: str, device: Device, *, gpus: int,
           gpus_per_worker: float, cpu_workers: int) -> str:
    """The plan as markdown: per scenario and attack, trials, FLOPs per trial by phase, seconds
    per trial and the cell's device-hours; then the whole config on ``gpus`` devices."""
    on_gpu = device.kind == "gpu"
    workers = (max(1, int(gpus / gpus_per_worker)) if on_gpu and gpus_per_worker > 0
               else cpu_workers)
    lines = [f"Device: {device_name} ({device.description}; {device.float32 / 1e12:.3g} "
             f"TFLOP/s float32, {device.bf16 / 1e12:.3g} bf16, "
             f"{device.seconds_per_step * 1e3:.3g} ms per step; {device.source})", ""]
    for plan in plans:
        lines.append(f"## {plan.name}")
        shared = [f"{p} {_flops(c.flops)} ({_hours(device.seconds(c, plan.precision))})"
                  for p, c in plan.shared.items() if c.flops]
        if shared:
            lines.append("Shared: " + ", ".join(shared) + " (pre-training once; bank and test "
                         "features once per worker)")
        lines.append("")
        lines.append("| attack | trials | craft | train | defend | eval | s / trial | device-hours |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for cell in plan.cells:
            per = sum((device.seconds(c, _precision(p, cell)) for p, c in cell.per_trial.items()),
                      0.0)
            row = [cell.attack, str(cell.trials)] + [_flops(cell.per_trial[p].flops)
                                                   for p in ("craft", "train", "defend", "eval")]
            row += [f"{per:.3g}", f"{per * cell.trials / 3600:.3g}"]
            lines.append("| " + " | ".join(row) + " |")
            for note in cell.notes:
                lines.append(f"  ({cell.attack}: {note})")
        lines.append("")
        if plan.defenses:  # what makes up "defend", costliest first
            lines.append("| defense (every victim) | FLOPs / trial | s / trial |")
            lines.append("|---|---:|---:|")
            for label, count in sorted(plan.defenses.items(), key=lambda kv: -kv[1].flops):
                lines.append(f"| {label} | {_flops(count.flops)} | "
                             f"{device.seconds(count, plan.precision):.3g} |")
            listed = sum(c.flops for c in plan.defenses.values())
            extra = max((c.per_trial["defend"].flops - listed for c in plan.cells), default=0.0)
            if extra > 1e-6 * listed:
                lines.append(f"  (under an attack with a trigger, each repaired victim is also "
                             f"scored on the triggered test images: up to {_flops(extra)} more "
                             "a trial, in that attack's `defend`)")
            lines.append("")
    t = totals(plans, device, workers)
    unit = "GPU" if on_gpu else "worker"
    lines.append(f"Whole config: {_flops(t.flops)}, {t.device_seconds / 3600:.3g} {unit}-hours "
                 f"at this device's rate; on {gpus if on_gpu else workers} {unit}(s) "
                 f"({workers} workers) about {t.device_seconds / 3600 / (gpus if on_gpu else workers):.3g} "
                 "h of wall time, if the workers keep every device busy.")
    return "\n".join(lines)
