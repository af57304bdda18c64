"""A run's saved victims re-evaluated under every ``asr_scope``: what their attack success rate
is as each definition counts it.

A row records its scenario's one scope; "Pick your Poison" defines the rate over the triggered
test images of the classes other than the poisons' label (``other_classes``, the configs'),
while its authors' code counts every test image (``every_class``). This loads each saved,
undefended victim of a run (``execution.save_victims``), checks that it reproduces its row's
recorded rate, and prints the rate under the three scopes.

    RAYPOISON_DATA_ROOT=../shared/data .venv/bin/python benchmarks/asr_scope.py \\
        configs/pyp-cifar10-jpeg-resnet-cpu.yaml benchmarks/results/pyp-resnet [--trials 3]

Victims are shared by scenarios that differ only in their defense-only fields; each is printed
once. Repaired models are not saved, so only undefended rates can be re-counted.
"""

from __future__ import annotations

import argparse

import torch

from raypoison.config.specs import expand, parse_trial_range
from raypoison.config.suite import load_suite
from raypoison.trial.context import TrialContext
from raypoison.trial.evaluate import evaluate_victim
from raypoison.trial.run import train_seed
from raypoison.trial.victims import VictimStore

SCOPES = ("other_classes", "every_class", "target_class")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("output", help="the run's output folder (it holds victims/)")
    parser.add_argument("--trials", default=None, help="trial indices, as `raypoison run` takes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    suite = load_suite(args.config)
    wanted = parse_trial_range(args.trials)
    store = VictimStore(f"{args.output.rstrip('/')}/victims")
    seen: set[tuple] = set()
    contexts: dict[str, TrialContext] = {}  # one per scenario, made when first needed
    print("| attack | trial | victim | recorded | " + " | ".join(SCOPES) + " | clean |")
    print("|---|---|---|---|" + "---|" * len(SCOPES) + "---|")
    for spec in expand(suite):
        if wanted is not None and spec.index not in wanted:
            continue
        scenario = spec.scenario
        for victim in scenario.victims:
            seed = train_seed(spec, victim)
            fields = store.victim_fields(spec, victim, seed)
            if fields is None:
                continue
            key = (spec.attack.label, spec.index, victim, fields.get("seconds_train"))
            if key in seen:
                continue
            seen.add(key)
            if scenario.name not in contexts:
                contexts[scenario.name] = TrialContext.create(scenario, {})
            ctx = contexts[scenario.name]
            _, trigger, _, _ = store.load_trial(spec, ctx.device)
            if trigger is None:
                continue
            model = ctx.fresh_victim(victim, seed)
            store.load_victim(spec, victim, model, seed)
            model.eval()
            setup = ctx.setup(spec.index)
            rates = {s: evaluate_victim(model, ctx.data, setup, trigger=trigger,
                                        asr_scope=s) for s in SCOPES}
            recorded = fields["attack_success_rate"]
            again = rates[scenario.asr_scope].attack_success_rate
            if again is None or abs(again - recorded) > 1e-9:
                raise SystemExit(f"{spec.attack.label} trial {spec.index} {victim}: the "
                                 f"saved victim gives {again}, its row {recorded}")
            print(f"| {spec.attack.label} | {spec.index} | {victim} | {100 * recorded:.2f} | "
                  + " | ".join(f"{100 * (rates[s].attack_success_rate or 0.0):.2f}"
                               for s in SCOPES)
                  + f" | {100 * rates[SCOPES[0]].clean_accuracy:.2f} |")


if __name__ == "__main__":
    main()
