"""`raypoison plan` against what a run measured: for each scenario, the planned seconds of a
trial's training, evaluation and each defense on a device of the calibration file, beside the
median seconds of the run's rows (``seconds_train`` and ``seconds_eval`` of the undefended rows,
``seconds_defense`` of each defense's).

    RAYPOISON_DATA_ROOT=../shared/data .venv/bin/python benchmarks/plan_vs_measured.py \\
        configs/pyp-cifar10-jpeg-resnet-cpu.yaml benchmarks/results/pyp-resnet \\
        --calibration benchmarks/calibration.json --device cpu-1thread

The device should be the one the rows ran on: measure it with ``raypoison plan CONFIG
--calibration FILE --calibrate NAME`` (one worker with the config's ``cpus_per_worker`` threads).
A ratio far from 1 says what the plan misses (work outside torch ops, data movement, a machine
busier than when it was calibrated).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd

from raypoison.config.suite import load_suite
from raypoison.core.identity import NO_DEFENSE
from raypoison.execution import cost, device_rates
from raypoison.store.results import load


def _measured(rows: pd.DataFrame, column: str) -> tuple[float, int]:
    values = rows[column].dropna()
    values = values[values > 0]  # rows that reused a saved victim record no training of their own
    return (float(values.median()), len(values)) if len(values) else (float("nan"), 0)


def compare(plan: cost.ScenarioCost, rows: pd.DataFrame, device: device_rates.Device
            ) -> list[dict[str, Any]]:
    """One record per phase and defense: planned and measured seconds per trial (per victim
    where a scenario has several: the plan sums its victims, a row is one)."""
    ok = rows[(rows["scenario"] == plan.name) & (rows["status"] == "ok")]
    undefended = ok[ok["defense"].isna() | (ok["defense"] == NO_DEFENSE)]
    trained = next((c for c in plan.cells if c.per_trial["train"].flops), None)
    out = []
    if trained is not None:
        victims = max(1, undefended["victim"].nunique())
        for phase, column in (("train", "seconds_train"), ("eval", "seconds_eval")):
            planned = device.seconds(trained.per_trial[phase], plan.precision) / victims
            median, n = _measured(undefended, column)
            out.append({"what": phase, "planned": planned, "measured": median, "rows": n})
    for label, count in plan.defenses.items():
        victims = max(1, ok.loc[ok["defense"] == label, "victim"].nunique())
        median, n = _measured(ok[ok["defense"] == label], "seconds_defense")
        out.append({"what": label, "planned": device.seconds(count, plan.precision) / victims,
                    "measured": median, "rows": n})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("results", help="the run's output folder")
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--device", required=True, help="a device of the calibration file")
    for option in ("--scenarios", "--attacks", "--defenses"):
        parser.add_argument(option, type=lambda s: s.split(","), help="only these, comma separated")
    args = parser.parse_args()
    devices = device_rates.load_devices(args.calibration)
    if args.device not in devices:  # before minutes of counting
        sys.exit(f"--device: unknown device {args.device!r} (known: {', '.join(devices)})")
    device = devices[args.device]
    rows = load(args.results)
    plans = cost.plan_suite(load_suite(args.config), scenarios=args.scenarios,
                            attacks=args.attacks, defenses=args.defenses)
    for plan in plans:
        records = compare(plan, rows, device)
        if not any(r["rows"] for r in records):
            print(f"## {plan.name}: no finished rows in {args.results}\n")
            continue
        print(f"## {plan.name} (device {args.device})\n")
        print("| phase or defense | planned s | measured s (median) | rows | measured / planned |")
        print("|---|---:|---:|---:|---:|")
        for r in records:
            ratio = r["measured"] / r["planned"] if r["planned"] else float("nan")
            print(f"| {r['what']} | {r['planned']:.1f} | {r['measured']:.1f} | {r['rows']} | "
                  f"{ratio:.2f} |")
        planned = sum(r["planned"] for r in records if r["rows"])
        measured = sum(r["measured"] for r in records if r["rows"])
        print(f"| all of the above | {planned:.1f} | {measured:.1f} | | "
              f"{measured / planned:.2f} |\n")


if __name__ == "__main__":
    main()
