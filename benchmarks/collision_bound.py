"""The perfect-collision bound of a transfer scenario: can its victims be poisoned at all?

A feature-space attack (Feature Collision, Convex and Bullseye Polytope) at best makes its poisons
look like the target to the frozen extractor. The strongest such poisons are copies of the
target itself, labelled with the base class: no clean-label attack within epsilon can collide more
closely, augmentation views included. This script trains each trial's victim head on the clean
images plus ``--copies`` such copies (default: the budget) and reports how many targets flip to
the base class. That share bounds what the attacks can reach on this victim and recipe, and if it
is low, no attack of this kind will beat the control however well it optimizes.

Copies are one point of weight ``--copies``; a polytope attack's poisons are that many distinct
points around the target, which the head must fit one by one. A third arm measures that: the
target's nearest neighbours among the other test images of its class (by distance between
unaugmented features), labelled with the base class, so that the head has to fit distinct
natural images of the target's class lying around it.

Each trial is also trained with the bases in place (the no-attack control), and every arm under
every head learning rate of ``--lr``: the head's training regime decides the bound,
because a head that has not converged leaves a small cluster of contradicting points unfitted.
Per learning rate and arm it prints the flips with 95% Wilson intervals, the share of the arm's
images the head puts in the base class (fit), the head's final training loss (mean over the last
epoch's batches) and the clean test accuracy.

It reads pre-trained models from a run's ``models/`` cache (run the config first):

    RAYPOISON_DATA_ROOT=../shared/data .venv/bin/python benchmarks/collision_bound.py \\
        configs/cifar10-jpeg-cpu.yaml runs/jpeg --trials 20 --lr 0.01,0.04,0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import numpy as np
import torch
from transfer_run import cached_context, neighbours, transfer_scenario

from raypoison.analysis.stats import wilson
from raypoison.core.identity import derive_seed
from raypoison.training.loop import logits, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("output", help="the run whose models/ cache holds the pre-trained models")
    parser.add_argument("--scenario", help="default: the config's first")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--copies", type=int, help="copies of the target (default: the budget)")
    parser.add_argument("--lr", default="", help="head learning rates, comma-separated "
                        "(default: the scenario's recipe)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    _, scenario = transfer_scenario(args.config, args.scenario)
    base_recipe = scenario.training_recipe
    lrs = [float(v) for v in args.lr.split(",") if v] or [base_recipe.lr]
    copies = args.copies or scenario.budget
    ctx = cached_context(scenario, args.output)
    victim = scenario.victims[0]
    data = ctx.data
    test_features = ctx.test_features(victim)
    assert test_features is not None  # a transfer scenario's
    print(f"{scenario.name}, victim {victim}, {copies} copies of the target; head lr {lrs}, "
          f"otherwise {base_recipe}", flush=True)

    # per lr and arm: flips, fits, final losses, test accuracies
    arm_names = ("control", "copies", "neighbours")
    tally: dict[tuple[float, str], tuple[list, list, list, list]] = {
        (lr, arm): ([], [], [], []) for lr in lrs for arm in arm_names}
    for index in range(args.trials):
        setup = ctx.setup(index)
        target = data.test_x[setup.target_index:setup.target_index + 1]
        pool = ctx.training_pool(setup, index)
        clean = torch.as_tensor(np.setdiff1d(pool, np.asarray(setup.base_indices)))
        arms = {"control": data.train_x[torch.as_tensor(setup.base_indices)],
                "copies": target.repeat(copies, 1, 1, 1),
                "neighbours": data.test_x[neighbours(test_features, data.test_y,
                                                     setup.target_index, copies)]}
        seed = derive_seed(scenario.seed, index, victim, "train")
        line = [f"trial {index} ({setup.target_class} -> {setup.base_class})"]
        for arm, extra in arms.items():
            labels = torch.full((len(extra),), setup.base_class, dtype=torch.long)
            features = ctx.training_features(victim, clean, extra)
            for lr in lrs:
                model = ctx.fresh_victim(victim, seed)
                result = train(model, torch.cat([data.train_x[clean], extra]),
                               torch.cat([data.train_y[clean], labels]),
                               recipe=dataclasses.replace(base_recipe, lr=lr), seed=seed,
                               trainable="head", features=features)
                flipped = int(logits(model, target)[0].argmax()) == setup.base_class
                fit = float((logits(model, extra).argmax(1) == setup.base_class).float().mean())
                with torch.no_grad():
                    predicted = model.head(test_features).argmax(1).cpu()
                accuracy = float((predicted == data.test_y.cpu()).float().mean())
                flips, fits, losses, accuracies = tally[(lr, arm)]
                flips.append(flipped)
                fits.append(fit)
                losses.append(result.final_loss)
                accuracies.append(accuracy)
                line.append(f"{arm} lr {lr:g}: {'flipped' if flipped else 'held'}")
        print(", ".join(line), flush=True)

    print(f"\n{'lr':>6} {'arm':>10} {'flipped':>8} {'% [95% Wilson]':>19} {'fit':>5} "
          f"{'final loss':>10} {'test acc':>8}")
    for (lr, arm), (flips, fits, losses, accuracies) in tally.items():
        low, high = wilson(sum(flips), len(flips))
        print(f"{lr:>6g} {arm:>10} {sum(flips):>4}/{len(flips):<3} "
              f"{100 * sum(flips) / len(flips):>5.1f} [{100 * low:.1f}, {100 * high:.1f}]"
              f" {statistics.mean(fits):>5.2f} {statistics.mean(losses):>10.3f}"
              f" {100 * statistics.mean(accuracies):>7.1f}%")


if __name__ == "__main__":
    main()
