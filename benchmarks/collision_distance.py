"""How close a feature-space attack's poisons get to the target, under several crafting budgets.

``collision_bound.py`` shows what a perfect collision (copies of the target) does to a transfer
victim; this script measures how near an attack's stored poisons come to that. Per trial it crafts
the poisons (uint8, as they are trained on) and reports, relative to the target's feature norm,
the distance from the target's unaugmented features to each poison's features, in the identity view
and averaged over all 162 crop-and-flip views the victim's head trains on, and the distance of
the poisons' mean feature (Bullseye Polytope's objective; a linear head's logit at that mean is the
mean of its logits at the poisons), averaged over the views. Two references give
the scale: the bases themselves (the no-attack control) and the target's ``budget`` nearest
same-class test neighbours (collision_bound.py's neighbours arm). It also prints the share of
pixels at the ε bound (how much ε binds), the final objective and the crafting seconds.

Each ``--set`` is one crafting budget (the attack's parameters overridden, e.g.
``iterations=1200`` or ``step=0.01,iterations=240``); the config's own settings always come first.
It reads the pre-trained models from a run's ``models/`` cache:

    RAYPOISON_DATA_ROOT=../shared/data .venv/bin/python benchmarks/collision_distance.py \\
        configs/cifar10-jpeg-cpu.yaml runs/jpeg --attack feature_collision --trials 10 \\
        --set iterations=1200 --set step=0.01
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Sequence

import torch
import yaml
from transfer_run import cached_context, neighbours, transfer_scenario

from raypoison.attacks import create_attack
from raypoison.attacks.crafting import eps_pixels
from raypoison.core.identity import derive_seed
from raypoison.core.registry import Component
from raypoison.data.augment import identity_view
from raypoison.training.feature_bank import view_features


def distances(model, images: torch.Tensor, target: torch.Tensor) -> tuple[float, float, float]:
    """Relative distances from uint8 ``images`` to the target's features: the median image's in
    the identity view and averaged over the views, and the images' mean feature's (what a linear
    head sees of them together, Bullseye Polytope's objective) averaged over the views."""
    features = view_features(model, images)
    norm = target.norm()
    each = (features - target).norm(dim=2) / norm
    mean = (features.mean(1) - target).norm(dim=1) / norm
    return (float(each[identity_view()].median()), float(each.mean(0).median()),
            float(mean.mean()))


def parse_set(text: str) -> dict:
    pairs = (item.split("=", 1) for item in text.split(",") if item)
    return {key.strip(): yaml.safe_load(value) for key, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("output", help="the run whose models/ cache holds the pre-trained models")
    parser.add_argument("--scenario", help="default: the config's first")
    parser.add_argument("--attack", default="feature_collision", help="an attack label of the config")
    parser.add_argument("--set", action="append", default=[], dest="settings",
                        help="parameter overrides, KEY=VALUE[,KEY=VALUE]; repeatable")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    suite, scenario = transfer_scenario(args.config, args.scenario)
    chosen = [a for a in suite.attacks if a.label == args.attack]
    if not chosen:
        raise SystemExit(f"no attack {args.attack!r} in {args.config} "
                         f"(it has {', '.join(a.label for a in suite.attacks)})")
    base = chosen[0]
    if len(scenario.attackers) > 1:
        raise SystemExit(f"scenario {scenario.name!r} crafts on {len(scenario.attackers)} models; "
                         "this script measures distances on one")
    settings = [{}] + [parse_set(s) for s in args.settings]
    ctx = cached_context(scenario, args.output)
    model = ctx.model(scenario.attackers[0])
    data = ctx.data
    bound = eps_pixels(scenario.epsilon)
    test_features = ctx.test_features(scenario.attackers[0])
    assert test_features is not None  # a transfer scenario's

    def summary(values: Sequence[float], digits: int = 2) -> str:
        return f"{statistics.median(values):.{digits}f}"

    def columns(measured: list[tuple[float, float, float]]) -> str:
        identity, views, mean = zip(*measured, strict=True)
        return (f"identity view {summary(identity)}  all views {summary(views)}  "
                f"mean poison {summary(mean)}")

    print(f"{scenario.name}: {base.label} on {scenario.attackers[0]}, {args.trials} trials; "
          "distances are ‖f(poison) − f(target)‖ / ‖f(target)‖, medians over trials of each "
          "trial's median poison; mean poison: the poisons' mean feature, over the views",
          flush=True)
    references: dict[str, list] = {"bases": [], "neighbours": []}
    for overrides in settings:
        params = dataclasses.replace(base.params, **overrides)
        params.validate(f"--set {overrides}")
        attack = create_attack(Component(name=base.name, params=params, label=base.label))
        measured, at_bound, losses, seconds = [], [], [], []
        for index in range(args.trials):
            setup = ctx.setup(index)
            target = test_features[setup.target_index]
            start = time.perf_counter()
            crafted = attack.craft(ctx, setup, derive_seed(scenario.seed, index, base.label,
                                                           "craft"), index)
            seconds.append(time.perf_counter() - start)
            assert crafted.poisons is not None  # a crafting attack's result holds its poisons
            poisons = crafted.poisons.images
            measured.append(distances(model, poisons, target))
            bases_u8 = data.train_x[list(setup.base_indices)]
            change = (poisons.int() - bases_u8.int()).abs()
            at_bound.append(float((change == bound).float().mean()))
            losses.append(crafted.loss_final or 0.0)
            if not overrides:  # the references, once
                near = neighbours(test_features, data.test_y, setup.target_index,
                                  scenario.budget)
                references["bases"].append(distances(model, bases_u8, target))
                references["neighbours"].append(distances(model, data.test_x[near], target))
        label = ",".join(f"{k}={v}" for k, v in overrides.items()) or "config"
        print(f"{label:<24} {columns(measured)}  pixels at ε {summary(at_bound)}  "
              f"objective {summary(losses, 3)}  craft s/trial {statistics.mean(seconds):.1f}",
              flush=True)
    for name, values in references.items():
        print(f"{name:<24} {columns(values)}", flush=True)


if __name__ == "__main__":
    main()
