"""The intervals of means over a few models and of detection AUCs: known values, and coverage
measured by simulation at the sizes the trade-off runs have (four seeds)."""

import math
from statistics import NormalDist

import numpy as np
import pytest

from raypoison.analysis.stats import auc_interval, mean_interval, student_t_quantile


@pytest.mark.parametrize("df,value", [(1, 12.7062), (3, 3.18245), (4, 2.77645), (9, 2.26216),
                                      (30, 2.04227), (200, 1.97190)])
def test_student_t_critical_values_match_tables(df, value):
    assert student_t_quantile(0.95, df) == pytest.approx(value, abs=1e-4)


def test_mean_interval_is_the_t_interval_clipped_to_its_range_and_absent_for_one_model():
    mean, low, high = mean_interval([0.1, 0.2, 0.3, 0.6])
    half = 3.182446 * np.std([0.1, 0.2, 0.3, 0.6], ddof=1) / 2
    assert (mean, low, high) == pytest.approx((0.3, 0.3 - half, 0.3 + half), abs=1e-5)
    assert mean_interval([0.1, 0.2, 0.3, 0.6], bounds=(0.0, 1.0))[1] == 0.0  # 0.3 - 0.34 < 0
    one = mean_interval([0.7])
    assert one[0] == 0.7 and math.isnan(one[1]) and math.isnan(one[2])
    assert all(math.isnan(v) for v in mean_interval([]))


def test_mean_interval_covers_the_mean_of_four_draws_95_times_in_100():
    rng = np.random.default_rng(1)
    covered = [low <= 0 <= high for _, low, high in
               (mean_interval(rng.normal(0, 1, 4)) for _ in range(2000))]
    assert 0.935 <= np.mean(covered) <= 0.965


def test_auc_interval_solves_newcombes_equation_and_keeps_a_width_at_perfect_separation():
    z2 = NormalDist().inv_cdf(0.975) ** 2

    def hanley_mcneil(theta, m, n):  # his variance with (m + n)/2 - 1 for m - 1 and n - 1
        q1, q2 = theta / (2 - theta), 2 * theta ** 2 / (1 + theta)
        k = (m + n) / 2 - 1
        return (theta * (1 - theta) + k * (q1 - theta ** 2) + k * (q2 - theta ** 2)) / (m * n)

    auc, low, high = auc_interval([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert auc == 1.0 and high == 1.0 and 0.5 < low < 0.8
    assert (1 - low) ** 2 == pytest.approx(z2 * hanley_mcneil(low, 6, 6), rel=1e-6)
    auc, low, high = auc_interval([1, 3, 5, 7, 9, 11], [0, 2, 4, 6, 8, 10, 12])
    assert auc == pytest.approx(21 / 42) and 0 < low < auc < high < 1
    for bound in (low, high):
        assert (bound - auc) ** 2 == pytest.approx(z2 * hanley_mcneil(bound, 6, 7), rel=1e-6)
    # up to 5 a side, the variance is Birnbaum and Klose's bound theta(1 - theta)/min(m, n)
    auc, low, high = auc_interval([1, 3, 5], [0, 2, 4, 6, 8])
    assert auc == pytest.approx(6 / 15) and 0 < low < auc < high < 1
    for bound in (low, high):
        assert bound * (1 - bound) / 3 >= hanley_mcneil(bound, 3, 5)
        assert (bound - auc) ** 2 == pytest.approx(z2 * bound * (1 - bound) / 3, rel=1e-6)
    assert all(math.isnan(v) for v in auc_interval([], [1.0]))


def test_auc_interval_holds_its_level_at_two_and_three_models_a_side():
    """Every ranking of 3 vs 3 models equally likely (no signal): the interval must contain 0.5
    in at least 95% of them; Newcombe's variance alone did in 90% (perfect separation, exact
    p = 0.10, gave [0.501, 1]). And 2 vs 2 at a true AUC of 0.9 (it covered 0.90 of draws)."""
    import itertools

    rankings = list(itertools.combinations(range(6), 3))
    covered = [low <= 0.5 <= high for _, low, high in (
        auc_interval(list(top), [i for i in range(6) if i not in top]) for top in rankings)]
    assert len(rankings) == 20 and np.mean(covered) >= 0.95
    assert auc_interval([3, 4, 5], [0, 1, 2])[1] < 0.5
    shift = math.sqrt(2) * NormalDist().inv_cdf(0.9)
    rng = np.random.default_rng(3)
    covered = [low <= 0.9 <= high for _, low, high in
               (auc_interval(rng.normal(shift, 1, 2), rng.normal(0, 1, 2)) for _ in range(2000))]
    assert np.mean(covered) >= 0.95


def test_values_that_all_agree_get_the_interval_n_equal_draws_allow_not_a_point():
    """Two models that both found 0% of the poisons do not make the mean certain: if a model
    differs with probability q, both agree with probability (1 - q)^2, so at 95% q <= 0.842,
    and the recall's mean is in [0, 0.842] (Clopper-Pearson's 0 of 2). Equal values inside the
    range, or without one, get no interval, as one value does."""
    q = 1 - 0.025 ** 0.5
    assert mean_interval([0.0, 0.0], bounds=(0.0, 1.0)) == pytest.approx((0.0, 0.0, q))
    assert mean_interval([1.0, 1.0, 1.0], bounds=(0.0, 1.0)) == pytest.approx(
        (1.0, 0.025 ** (1 / 3), 1.0))
    for values, bounds in (([0.02] * 4, (-1.0, 1.0)), ([3.0, 3.0], None)):
        mean, low, high = mean_interval(values, bounds=bounds)
        assert mean == pytest.approx(values[0]) and math.isnan(low) and math.isnan(high)


def test_auc_interval_covers_the_true_auc_of_four_against_four():
    shift = math.sqrt(2) * NormalDist().inv_cdf(0.8)  # two unit normals this far apart: AUC 0.8
    rng = np.random.default_rng(2)
    covered = [low <= 0.8 <= high for _, low, high in
               (auc_interval(rng.normal(shift, 1, 4), rng.normal(0, 1, 4)) for _ in range(1000))]
    assert 0.93 <= np.mean(covered) <= 0.99


def _defended(attack: str, trial: int, defense: str, **values) -> dict:
    row = {"scenario": "s", "victim": "v", "attack": attack, "trial": trial, "status": "ok",
           "attack_name": "none" if attack == "control" else "badnets",
           "poisons": 0 if attack == "control" else 50, "defense": defense,
           "defense_name": defense, "defense_params": "{}", "trusted_size": 500,
           "clean_accuracy": 0.8 + 0.01 * trial, "attack_success_rate": 0.9,
           "clean_accuracy_repaired": math.nan, "attack_success_rate_repaired": math.nan,
           "detection_score": math.nan, "flag_precision": math.nan, "flag_recall": math.nan,
           "flag_auc": math.nan}
    return {**row, **values}


def test_defense_tables_say_how_many_models_each_row_rests_on():
    import pandas as pd

    from raypoison.analysis.defense_report import defense_table
    from raypoison.analysis.tables import defense_pivots

    rows = [_defended(attack, t, "cti", detection_score=t + (5.0 if attack == "badnets" else 0))
            for attack in ("control", "badnets") for t in range(3)]
    rows += [_defended("badnets", t, "pt", clean_accuracy_repaired=0.78 + 0.01 * t,
                       attack_success_rate_repaired=0.1) for t in range(3)]
    rows.append(_defended("control", 0, "pt", clean_accuracy_repaired=0.79,
                          attack_success_rate_repaired=0.05))
    pivots = dict(defense_pivots(defense_table(pd.DataFrame(rows))))
    auc = next(f for title, f in pivots.items() if title.startswith("Detection")).set_index("attack")
    assert auc.loc["badnets", "n"] == "3 vs 3"
    loss = next(f for title, f in pivots.items() if title.startswith("Clean")).set_index("attack")
    assert loss.loc["badnets", "n"] == "3" and loss.loc["control", "n"] == "1"
    assert loss.loc["badnets", "clean accuracy before, %"].startswith("81.0 [")
    assert loss.loc["control", "pt"] == "1.0"  # one model: its loss, no interval
    assert loss.loc["badnets", "pt"] == "2.0"  # the same loss on each: no interval, not a point


def test_the_undefended_column_rests_on_the_models_its_row_counts():
    """A run landing in pieces: one repair has run on three models, another on one; the row's n
    is 3, and so must be the clean accuracy before (not the one model's first repair)."""
    import pandas as pd

    from raypoison.analysis.defense_report import POOLED, defense_table, pooled_repair_cost
    from raypoison.analysis.tables import defense_pivots

    rows = [_defended("badnets", t, "pt", clean_accuracy_repaired=0.7) for t in range(3)]
    rows.append(_defended("badnets", 2, "a_first", clean_accuracy_repaired=0.7))
    pivots = dict(defense_pivots(defense_table(pd.DataFrame(rows))))
    loss = next(f for title, f in pivots.items() if title.startswith("Clean")).set_index("attack")
    assert loss.loc["badnets", "n"] == "3"
    assert loss.loc["badnets", "clean accuracy before, %"].startswith("81.0 [")  # not 82.0
    assert loss.loc["badnets", "a_first"] == "12.0 (n 1)"  # one model of the row's 3
    # the pooled row too: its accuracy before comes from the repair with the most models
    seeded = pd.DataFrame([dict(r, seed_train=100 + r["trial"]) for r in rows])
    pooled = defense_pivots(defense_table(seeded), pooled_repair_cost(seeded))
    loss = next(f for title, f in pooled if title.startswith("Clean")).set_index("attack")
    assert loss.loc[POOLED, "n"] == "3 models, 3 seeds"
    assert loss.loc[POOLED, "clean accuracy before, %"].startswith("81.0 [")  # not 82.0
    # a repair run on fewer models and seeds than the pooled row's n says its own
    assert loss.loc[POOLED, "a_first"] == "12.0 (1 model, 1 seed)"
    assert "(" not in loss.loc[POOLED, "pt"]


def test_an_auc_cell_on_fewer_attacked_or_control_models_says_both():
    """The row's n is "3 vs 3"; a detector run on every attacked model but one control model
    rests on 3 vs 1, which "(n 3)" would not say (it counted the attacked side only)."""
    import pandas as pd

    from raypoison.analysis.defense_report import defense_table
    from raypoison.analysis.tables import defense_pivots

    rows = [_defended(attack, t, "cti", detection_score=t + (5.0 if attack == "badnets" else 0))
            for attack in ("control", "badnets") for t in range(3)]
    rows += [_defended("badnets", t, "nc", detection_score=float(t)) for t in range(3)]
    rows.append(_defended("control", 0, "nc", detection_score=1.0))
    rows += [_defended("badnets", t, "strip", detection_score=float(t)) for t in range(2)]
    rows += [_defended("control", t, "strip", detection_score=1.0) for t in range(3)]
    pivots = dict(defense_pivots(defense_table(pd.DataFrame(rows))))
    auc = next(f for title, f in pivots.items() if title.startswith("Detection")).set_index("attack")
    assert auc.loc["badnets", "n"] == "3 vs 3"
    assert "(" not in auc.loc["badnets", "cti"]
    assert auc.loc["badnets", "nc"].endswith(" (3 vs 1)")
    assert auc.loc["badnets", "strip"].endswith(" (2 vs 3)")


def test_a_repairs_pooled_cost_averages_each_seed_first_and_takes_its_interval_over_seeds():
    import pandas as pd

    from raypoison.analysis.defense_report import POOLED, defense_table, pooled_repair_cost
    from raypoison.analysis.tables import defense_pivots

    # three attacks share each of three training seeds; a seed's models lose alike
    losses = {0: 0.02, 1: 0.03, 2: 0.07}
    rows = [_defended(attack, t, "pt", seed_train=1000 + t, clean_accuracy=0.8,
                      clean_accuracy_repaired=0.8 - losses[t] - (0.001 if attack == "control"
                                                                  else 0.0),
                      attack_success_rate_repaired=0.1)
            for attack in ("control", "badnets", "blend") for t in range(3)]
    rows.append(_defended("badnets", 0, "cti", seed_train=1000, detection_score=1.0))
    frame = pd.DataFrame(rows)
    pooled = pooled_repair_cost(frame).set_index("defense")
    assert list(pooled.index) == ["pt"]  # a detector repairs nothing
    per_seed = [losses[t] + 0.001 / 3 for t in range(3)]
    mean, half = np.mean(per_seed), 4.302653 * np.std(per_seed, ddof=1) / math.sqrt(3)
    assert (pooled.loc["pt", "seeds"], pooled.loc["pt", "models"]) == (3, 9)
    assert pooled.loc["pt", "clean_accuracy_loss"] == pytest.approx(mean)
    assert pooled.loc["pt", "clean_accuracy_loss_low"] == pytest.approx(mean - half)
    assert pooled.loc["pt", "clean_accuracy_loss_high"] == pytest.approx(mean + half)
    # nine models taken as independent would claim an interval this many times narrower
    naive = 2.306004 * np.std(np.repeat(per_seed, 3), ddof=1) / 3
    assert half > 2.5 * naive

    loss = next(f for t, f in defense_pivots(defense_table(frame), pooled_repair_cost(frame))
                if t.startswith("Clean")).set_index("attack")
    assert loss.loc[POOLED, "n"] == "9 models, 3 seeds"
    assert loss.loc[POOLED, "pt"] == f"{100 * mean:.1f} [{100 * (mean - half):.1f}, " \
                                     f"{100 * (mean + half):.1f}]"
    assert loss.loc[POOLED, "poisons"] == ""

    # rows without a training seed are grouped by their trial index
    unseeded = pooled_repair_cost(frame.drop(columns="seed_train")).set_index("defense")
    assert unseeded.loc["pt", "seeds"] == 3
    assert unseeded.loc["pt", "clean_accuracy_loss"] == pytest.approx(mean)


def test_two_scenarios_defenses_are_paired_on_the_same_victims_only():
    import pandas as pd

    from raypoison.analysis.compare import ALL_ATTACKS, compare_scenarios
    from raypoison.analysis.tables import scenarios_display

    held = {0: 0.030, 1: 0.035, 2: 0.050}  # Pivotal Tuning's loss per trial, held-out set
    drawn = {0: 0.020, 1: 0.030, 2: 0.040}  # ... and with the set drawn from training
    rows = []
    for scenario, loss in (("drawn", drawn), ("held", held)):
        for attack in ("badnets", "control"):
            for t in range(3):
                shift = 0.002 if attack == "control" else 0.0
                rows.append(_defended(attack, t, "pt", scenario=scenario, seed_train=100 + t,
                                      clean_accuracy_repaired=0.8 + 0.01 * t - loss[t] - shift,
                                      attack_success_rate_repaired=0.5))
            rows.append(_defended(attack, 0, "cti", scenario=scenario, seed_train=100,
                                  detection_score=0.4 if scenario == "drawn" else 0.6))
    # the held-out scenario's control of trial 2 ran on another model (retrained elsewhere)
    other = next(r for r in rows if (r["scenario"], r["attack"], r["trial"], r["defense"])
                 == ("held", "control", 2, "pt"))
    other["clean_accuracy"] += 0.003
    other["clean_accuracy_repaired"] += 0.003
    # Fine-Pruning ran on that trial alone: nothing pairs, and the table still says so
    for scenario, shift in (("drawn", 0.0), ("held", 0.003)):
        rows.append(_defended("control", 2, "fp", scenario=scenario, seed_train=102,
                              clean_accuracy=0.82 + shift, clean_accuracy_repaired=0.8))
    diff = compare_scenarios(pd.DataFrame(rows), "drawn", "held").set_index(["attack", "defense"])
    assert set(diff["victim"]) == {"v"}
    assert (diff.loc[("control", "fp"), "pairs"], diff.loc[("control", "fp"), "unpaired"]) == (
        0, 1)
    assert math.isnan(diff.loc[("control", "fp"), "clean_accuracy_loss_difference"])

    bad = diff.loc[("badnets", "pt")]
    d = np.array([drawn[t] - held[t] for t in range(3)])
    half = 4.302653 * d.std(ddof=1) / math.sqrt(3)
    assert (bad["pairs"], bad["unpaired"]) == (3, 0)
    assert bad["clean_accuracy_loss_first"] == pytest.approx(np.mean(list(drawn.values())))
    assert bad["clean_accuracy_loss_difference"] == pytest.approx(d.mean())
    assert bad["clean_accuracy_loss_low"] == pytest.approx(d.mean() - half)
    assert bad["clean_accuracy_loss_high"] == pytest.approx(d.mean() + half)
    assert bad["attack_success_rate_repaired_difference"] == pytest.approx(0.0)
    control = diff.loc[("control", "pt")]
    assert (control["pairs"], control["unpaired"]) == (2, 1)  # another model: not a pair
    assert control["clean_accuracy_loss_difference"] == pytest.approx(d[:2].mean())
    assert diff.loc[("control", "cti"), "detection_score_difference"] == pytest.approx(-0.2)
    pooled = diff.loc[(ALL_ATTACKS, "pt")]
    assert (pooled["pairs"], pooled["seeds"], pooled["unpaired"]) == (5, 3, 1)
    # seeds 100 and 101 have two pairs each (equal differences), seed 102 one: over seeds
    assert pooled["clean_accuracy_loss_difference"] == pytest.approx(d.mean())
    assert pooled["clean_accuracy_loss_low"] == pytest.approx(d.mean() - half)

    shown = scenarios_display(compare_scenarios(pd.DataFrame(rows), "drawn", "held"),
                              "drawn", "held")
    cti = shown[(shown["attack"] == "badnets") & (shown["defense"] == "cti")]
    assert cti["measure"].tolist() == ["detection score"]  # a detector repairs nothing
    assert cti[["drawn", "held", "difference [95%]"]].values.tolist() == [
        ["0.400", "0.600", "-0.200"]]
    pooled_pt = shown[(shown["attack"] == ALL_ATTACKS) & (shown["defense"] == "pt")]
    assert pooled_pt["n"].tolist() == ["5 pairs, 3 seeds"] * 2  # loss, attack success
    assert pooled_pt["unpaired"].tolist() == ["1"] * 2
    fp = shown[shown["defense"] == "fp"]
    assert fp["measure"].tolist() == ["no pair on the same model"] * 2  # control, all attacks
    assert fp["unpaired"].tolist() == ["1", "1"]
    with pytest.raises(ValueError, match="no defended rows of scenario 'nowhere'"):
        compare_scenarios(pd.DataFrame(rows), "nowhere", "held")
    twice = [*rows, dict(rows[0], trial_id="another config's trial")]
    with pytest.raises(ValueError, match="several trials of one index"):
        compare_scenarios(pd.DataFrame(twice), "drawn", "held")
    # one label with two parameter sets is two defenses, as in the defense tables
    variant = [dict(r, defense_params='{"lr": 1}') for r in rows if r["defense"] == "pt"]
    split = compare_scenarios(pd.DataFrame([*rows, *variant]), "drawn", "held")
    assert len({d for d in split["defense"] if d.startswith("pt [")}) == 2
    assert "pt" not in set(split["defense"])
