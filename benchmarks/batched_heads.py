"""Transfer heads trained one by one or together (execution.batch_heads): trials per minute on the
same trials, and whether their rows agree.

    RAYPOISON_DATA_ROOT=../shared/data python benchmarks/batched_heads.py \\
        configs/cifar10-jpeg-cpu.yaml runs/jpeg --scenario cifar10-jpeg-resnet-transfer-head-lr0.1 \\
        --attack none --trials 16 --threads 1

The trial context (data, the run's cached pre-trained model, its feature bank) is built once and
shared by both ways, so the figures compare the trials alone. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transfer_run import cached_context, transfer_scenario

from raypoison.config.specs import expand
from raypoison.trial.run import run_trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("run", help="a run's output folder with the pre-trained models")
    parser.add_argument("--scenario")
    parser.add_argument("--attack", default="none", help="attack label (default: none)")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    suite, scenario = transfer_scenario(args.config, args.scenario)
    specs = [s for s in expand(suite, attacks=[args.attack], scenarios=[scenario.name],
                               trials=range(args.trials))]
    tick = time.perf_counter()
    ctx = cached_context(scenario, args.run)
    run_trials(specs[:1], ctx)  # builds the bank and the test features, outside the timing
    setup_seconds = time.perf_counter() - tick
    times, rows = {}, {}
    for way, together in (("one_by_one", False), ("together", True)):
        tick = time.perf_counter()
        rows[way] = [r for trial in run_trials(specs, ctx, batch_heads=together) for r in trial]
        times[way] = time.perf_counter() - tick
    pairs = list(zip(rows["one_by_one"], rows["together"], strict=True))
    print(json.dumps({
        "scenario": scenario.name, "attack": args.attack, "trials": len(specs),
        "threads": args.threads, "setup_seconds": round(setup_seconds, 1),
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "trials_per_minute": {k: round(60 * len(specs) / v, 2) for k, v in times.items()},
        "speedup": round(times["one_by_one"] / times["together"], 2),
        "status": sorted({r["status"] for r in rows["together"]}),
        "same_success_and_prediction": sum((a["success"], a["target_pred"])
                                           == (b["success"], b["target_pred"]) for a, b in pairs),
        "max_clean_accuracy_difference": max(abs(a["clean_accuracy"] - b["clean_accuracy"])
                                             for a, b in pairs),
        "max_target_margin_difference": max(abs(a["target_margin"] - b["target_margin"])
                                            for a, b in pairs),
    }, indent=2))


if __name__ == "__main__":
    main()
