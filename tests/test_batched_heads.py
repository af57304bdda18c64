"""Transfer heads trained together equal heads trained one by one, up to float rounding."""

from __future__ import annotations

import pytest
import torch

from raypoison.config.specs import expand
from raypoison.config.suite import parse_suite
from raypoison.core.identity import derive_seed
from raypoison.training.loop import train, train_heads
from raypoison.trial.context import TrialContext
from raypoison.trial.run import run_trials


@pytest.fixture
def banked(tiny_raw, tiny_checkpoint):
    suite = parse_suite(tiny_raw)
    ctx = TrialContext.create(suite.scenarios[0], {"net-a": tiny_checkpoint})
    assert ctx.uses_feature_bank
    return suite, ctx


@pytest.mark.parametrize(("augment", "as_stored"), [(True, False), (False, False), (True, True)])
def test_stacked_heads_end_where_one_by_one_heads_end(banked, augment, as_stored):
    """``as_stored``: the poisons carry their own view (``unaugmented``), as dirty-label
    backdoors' do."""
    suite, ctx = banked
    scenario = suite.scenarios[0]
    recipe = scenario.training_recipe.__class__(**{**vars(scenario.training_recipe),
                                                   "augment": augment})
    data, sets, seeds = ctx.data, [], []
    for index in range(3):
        setup = ctx.setup(index)
        pool = torch.as_tensor(ctx.training_pool(setup, index))
        clean = pool[~torch.isin(pool, torch.as_tensor(setup.base_indices))]
        poisons = data.train_x[list(setup.base_indices)]
        images = torch.cat([data.train_x[clean], poisons])
        labels = torch.cat([data.train_y[clean], data.train_y[list(setup.base_indices)]])
        kept = torch.arange(len(labels)) >= len(clean) if as_stored else None
        sets.append((clean, poisons, images, labels, kept))
        seeds.append(derive_seed(scenario.seed, index, "net-a", "train"))
    alone = []
    for (clean, poisons, images, labels, kept), seed in zip(sets, seeds, strict=True):
        model = ctx.fresh_victim("net-a", seed)
        fit = train(model, images, labels, recipe=recipe, seed=seed, trainable="head",
                    features=ctx.training_features("net-a", clean, poisons), unaugmented=kept)
        alone.append((model, fit))
    models = [ctx.fresh_victim("net-a", seed) for seed in seeds]
    fits = train_heads(models, [s[3] for s in sets], recipe=recipe, seeds=seeds,
                       features=[ctx.training_features("net-a", s[0], s[1]) for s in sets],
                       unaugmented=[s[4] for s in sets])
    for (one, fit_one), together, fit in zip(alone, models, fits, strict=True):
        assert torch.allclose(one.head.weight, together.head.weight, atol=1e-5)
        assert torch.allclose(one.head.bias, together.head.bias, atol=1e-5)
        assert fit.steps == fit_one.steps and fit.final_loss == pytest.approx(fit_one.final_loss,
                                                                              rel=1e-4)
    # the heads differ from each other: each trained on its own draws
    assert not torch.allclose(models[0].head.weight, models[1].head.weight, atol=1e-3)


def test_trials_with_batched_heads_give_the_rows_of_trials_trained_alone(banked):
    suite, ctx = banked
    specs = [s for s in expand(suite) if s.attack.name == "feature_collision" and s.index < 3]
    one = run_trials(specs, ctx)
    together = run_trials(specs, ctx, batch_heads=True)
    for rows_a, rows_b in zip(one, together, strict=True):
        [a], [b] = rows_a, rows_b
        assert a["status"] == b["status"] == "ok", (a["error"], b["error"])
        assert (a["success"], a["target_pred"]) == (b["success"], b["target_pred"])
        assert a["clean_accuracy"] == pytest.approx(b["clean_accuracy"], abs=1e-9)
        assert a["target_margin"] == pytest.approx(b["target_margin"], abs=1e-4)


def test_a_diverging_recipe_fails_each_batched_trial_as_it_fails_alone(tiny_raw, tiny_checkpoint):
    """A NaN loss stops a head trained alone (the trial fails); batched, each head's final loss
    is checked, so the trials fail alike instead of writing ok rows for heads of NaNs."""
    tiny_raw["scenarios"][0]["recipe"]["lr"] = 1e30
    suite = parse_suite(tiny_raw)
    ctx = TrialContext.create(suite.scenarios[0], {"net-a": tiny_checkpoint})
    specs = [s for s in expand(suite) if s.attack.name == "none" and s.index < 2]
    for batch in (False, True):
        rows = run_trials(specs, ctx, batch_heads=batch)
        assert [r["status"] for (r,) in rows] == ["failed", "failed"], batch
        assert all("diverged" in r["error"] for (r,) in rows), [r["error"] for (r,) in rows]
