"""Per-victim view of a "Pick your Poison" trade-off run: what each repair did to each model.

The report pools models into means with intervals; the paragraph in benchmarks/README.md also
makes per-victim claims (how many victims a repair kept within 2 points, which backdoors a repair
left in place, how each detector scored each model). This prints them from the results, so every
such sentence can be checked against the committed rows.

    .venv/bin/python benchmarks/pyp_victims.py benchmarks/results/pyp-resnet \\
        [--scenario cifar10-jpeg-resnet-scratch-trusted-training] [--within 2] [--planted 50]

A victim counts as backdoored when its undefended attack success rate is at least ``--planted``
percent (a BadNets victim below it learnt no backdoor; the control never has one).
"""

from __future__ import annotations

import argparse

import pandas as pd

from raypoison.store import results

REPAIRS = ("pivotal_tuning", "fine_tuning", "fine_pruning", "neural_attention_distillation",
           "neural_attention_distillation_pyp")
DETECTORS = ("calibrated_trigger_inversion", "neural_cleanse", "neural_cleanse_additive")


def victims(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model (attack, trial, victim): undefended clean accuracy and attack success,
    each repair's clean-accuracy loss (points) and attack success after it, each detector's score."""
    ok = df[df["status"] == "ok"].copy()
    ok.loc[ok["attack_name"] == "none", "poisons"] = 0  # the control plants nothing
    key = ["attack", "poisons", "trial", "victim"]
    base = ok[ok["defense"] == "none"].set_index(key)
    out = pd.DataFrame({"clean": 100 * base["clean_accuracy"],
                        "asr": 100 * base["attack_success_rate"]})
    for name in REPAIRS:
        rows = ok[ok["defense"] == name].set_index(key)
        out[f"{name}:lost"] = 100 * (rows["clean_accuracy"] - rows["clean_accuracy_repaired"])
        out[f"{name}:asr"] = 100 * rows["attack_success_rate_repaired"]
    for name in DETECTORS:
        out[f"{name}:score"] = ok[ok["defense"] == name].set_index(key)["detection_score"]
    return out.sort_index()


def summary(table: pd.DataFrame, within: float, planted: float) -> list[str]:
    lines = []
    backdoored = table["asr"] >= planted
    for name in REPAIRS:
        lost = table[f"{name}:lost"].dropna()
        kept = int((lost <= within).sum())
        left = table.loc[backdoored, f"{name}:asr"].dropna()
        lines.append(f"{name}: {kept} of {len(lost)} models lost at most {within:g} points "
                     f"(range {lost.min():.2f}-{lost.max():.2f}); on the {len(left)} backdoored "
                     f"models attack success after it {left.min():.1f}-{left.max():.1f}%")
    for poisons, group in table[backdoored].groupby(level="poisons"):
        nad = group["neural_attention_distillation:asr"].round(1).tolist()
        lines.append(f"backdoored at {poisons} poisons: {len(group)} models; NAD left {nad}%")
    lines.append(f"models: {len(table)}; backdoored: {int(backdoored.sum())}")
    missing = table.index[~backdoored & (table.index.get_level_values("poisons") > 0)]
    lines.append("attacked models without a backdoor: "
                 + (", ".join(f"{a} seed {t}" for a, _, t, _ in missing) or "none"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="the run's output folder")
    parser.add_argument("--scenario", default="cifar10-jpeg-resnet-scratch-trusted-training")
    parser.add_argument("--within", type=float, default=2.0, help="points of clean accuracy")
    parser.add_argument("--planted", type=float, default=50.0,
                        help="undefended attack success (%%) that counts as a backdoor")
    args = parser.parse_args()
    df = results.load(args.output)
    df = df[df["scenario"] == args.scenario]
    if df.empty:
        raise SystemExit(f"no rows of scenario {args.scenario!r} in {args.output}")
    table = victims(df)
    with pd.option_context("display.width", 250, "display.max_columns", 30,
                           "display.float_format", "{:.2f}".format):
        print(table.rename(columns=lambda c: c.replace("neural_attention_distillation", "nad")
                           .replace("calibrated_trigger_inversion", "cti")
                           .replace("pivotal_tuning", "pt").replace("fine_tuning", "ft")
                           .replace("fine_pruning", "fp").replace("neural_cleanse", "nc")))
    print()
    print("\n".join(summary(table, args.within, args.planted)))


if __name__ == "__main__":
    main()
