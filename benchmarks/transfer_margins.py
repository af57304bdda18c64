"""Why a feature-space attack does or does not flip a transfer victim: target margins, per trial.

For the first trials of a transfer scenario, crafts the attack's poisons as a run would, then
trains the victim's head twice from the same seed, once on the clean training set (the bases
unchanged) and once with the poisons in their place, each with and without augmentation.
Prints, per trial:

- how far the mean feature of the bases and of the poisons lies from the target's, relative to
  the target's norm; for the poisons also averaged over the 162 crop-and-flip views that the
  augmented head trains on (the attacks craft on the unaugmented images only), next to the same
  figure for the target's own views;
- the target's margin, base-class logit minus target-class logit, in each victim: the attack
  needs the base-class logit to be the largest of all, so it has to move a negative margin past
  zero at least (the rows' ``target_margin`` is the stricter base-class logit minus the largest
  other one);
- how well the poisoned victim fits the poisons: the share of poisons it puts in the base class
  and their mean margin. A linear head's margin at the poisons' mean feature is their mean
  margin, so where a polytope attack collides that mean with the target, the target's margin
  follows the poisons': a head that fits none of them will not be fooled this way.

It reads pre-trained models from a run's ``models/`` cache (run the config first):

    RAYPOISON_DATA_ROOT=../shared/data .venv/bin/python benchmarks/transfer_margins.py \\
        configs/cifar10-jpeg-convnet-cpu.yaml runs/cifar10-jpeg-cpu bullseye_polytope --trials 8
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch
from transfer_run import cached_context, transfer_scenario

from raypoison.attacks import create_attack
from raypoison.core.identity import derive_seed
from raypoison.training.feature_bank import view_features
from raypoison.training.loop import train
from raypoison.trial.context import TrialContext


def relative_distance(features: torch.Tensor, target: torch.Tensor) -> float:
    return float((features.mean(0) - target).norm() / target.norm())


def victim_after_training(ctx: TrialContext, victim: str, index: int, clean: torch.Tensor,
                          extra: torch.Tensor, extra_labels: torch.Tensor,
                          augment: bool) -> torch.nn.Module:
    """The victim's head trained on the clean images plus ``extra`` (the bases or the poisons),
    seeded as the run seeds it."""
    scenario, data = ctx.scenario, ctx.data
    recipe = dataclasses.replace(scenario.training_recipe, augment=augment)
    seed = derive_seed(scenario.seed, index, victim, "train")
    model = ctx.fresh_victim(victim, seed)
    banked = augment and scenario.training_recipe.augment  # else the bank lacks the views
    features = ctx.training_features(victim, clean, extra) if banked else None
    train(model, torch.cat([data.train_x[clean], extra]),
          torch.cat([data.train_y[clean], extra_labels]), recipe=recipe, seed=seed,
          trainable="head", features=features)
    return model


def margins(model: torch.nn.Module, images: torch.Tensor, target_class: int,
            base_class: int) -> torch.Tensor:
    """Base-class logit minus target-class logit of each uint8 image."""
    with torch.no_grad():
        logits = model(images.float().div(255))
    return logits[:, base_class] - logits[:, target_class]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("output", help="the run whose models/ cache holds the pre-trained models")
    parser.add_argument("attack", help="an attack label of the config")
    parser.add_argument("--scenario", help="default: the config's first")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    suite, scenario = transfer_scenario(args.config, args.scenario)
    attack_cfg = next((a for a in suite.attacks if a.label == args.attack), None)
    if attack_cfg is None:
        raise SystemExit(f"no attack {args.attack!r} in {args.config}")
    ctx = cached_context(scenario, args.output)
    attack = create_attack(attack_cfg)
    victim = next((v for v in scenario.victims if v in scenario.attackers), scenario.victims[0])
    extractor = ctx.model(victim)
    data = ctx.data
    shifts: dict[bool, list[float]] = {True: [], False: []}
    print(f"{scenario.name}, {args.attack}, victim {victim}")
    for index in range(args.trials):
        setup = ctx.setup(index)
        tick = time.perf_counter()
        crafted = attack.craft(ctx, setup, derive_seed(scenario.seed, index, attack_cfg.label,
                                                       "craft"), index)
        seconds = time.perf_counter() - tick
        target = data.test_x[setup.target_index:setup.target_index + 1]
        bases = data.train_x[torch.as_tensor(setup.base_indices)]
        assert crafted.poisons is not None  # a crafting attack's result holds its poisons
        poisons = crafted.poisons.images
        with torch.no_grad():
            f_target = extractor.features(target.float().div(255))[0]
            f_bases = extractor.features(bases.float().div(255))
            f_poisons = extractor.features(poisons.float().div(255))
            f_views = view_features(extractor, poisons).flatten(0, 1)
            f_target_views = view_features(extractor, target).flatten(0, 1)
        pool = ctx.training_pool(setup, index)
        clean = torch.as_tensor(np.setdiff1d(pool, np.asarray(setup.base_indices)))
        labels = torch.as_tensor(np.asarray(crafted.poisons.labels, dtype=np.int64))
        line = [f"trial {index}: craft {seconds:.0f} s; relative distance to the target: "
                f"bases {relative_distance(f_bases, f_target):.3f}, poisons "
                f"{relative_distance(f_poisons, f_target):.3f}, poisons over views "
                f"{relative_distance(f_views, f_target):.3f} (the target's own views "
                f"{relative_distance(f_target_views, f_target):.3f})"]
        for augment in (True, False):
            clean_victim, poisoned_victim = (victim_after_training(
                ctx, victim, index, clean, extra, labels, augment) for extra in (bases, poisons))
            before, after = (float(margins(m, target, setup.target_class, setup.base_class)[0])
                             for m in (clean_victim, poisoned_victim))
            fit = margins(poisoned_victim, poisons, setup.target_class, setup.base_class)
            with torch.no_grad():
                in_base = poisoned_victim(poisons.float().div(255)).argmax(1) == setup.base_class
            shifts[augment].append(after - before)
            line.append(f"{'with' if augment else 'without'} augmentation: target margin "
                        f"{before:+.2f} -> {after:+.2f}, poisons in the base class "
                        f"{int(in_base.sum())}/{len(poisons)}, their mean margin "
                        f"{float(fit.mean()):+.2f}")
        print("; ".join(line), flush=True)
    for augment, values in shifts.items():
        print(f"median margin shift {'with' if augment else 'without'} augmentation: "
              f"{statistics.median(values):+.2f} over {len(values)} trials")


if __name__ == "__main__":
    main()
