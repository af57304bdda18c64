"""The defaults that the benchmark's reference code fixes (issue: reference-faithful attacks and
data), each on a tiny model or a constructed case where the old behaviour would fail."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from raypoison.attacks import create_attack
from raypoison.attacks.backdoors import repair
from raypoison.attacks.crafting import (
    CraftOutcome,
    adam_descend,
    descend,
    descend_lagged,
    milestone_lr,
    scheduled_descend,
)
from raypoison.attacks.polytope import project_simplex_np, refit_coefficients
from raypoison.attacks.witches_brew import best_restart, schedule_milestones
from raypoison.config.suite import parse_suite
from raypoison.trial.context import TrialContext
from raypoison.trial.evaluate import check_poisons


@pytest.fixture(scope="module")
def context(tiny_checkpoint):
    from tests.conftest import TINY

    suite = parse_suite({**TINY, "attacks": [
        {"name": "convex_polytope", "params": {"iterations": 1}},
        {"name": "bullseye_polytope", "params": {"iterations": 1}},
    ]})
    return suite, TrialContext.create(suite.scenarios[0], {"net-a": tiny_checkpoint})


# --- Convex and Bullseye Polytope: Adam on the normalized image -------------------------------


@pytest.mark.parametrize("which", [0, 1], ids=["convex_polytope", "bullseye_polytope"])
def test_polytope_first_step_is_lr_times_std_in_pixels(context, which):
    """Adam's first step moves every coordinate of its variable by lr; on the normalized image
    that is lr × std in pixels (0.04 × 0.2 ≈ 2/255), where Adam on pixels moved 0.04 ≈ 10/255 and
    put the tiny scenario's poisons on its 16/255 bound at once."""
    suite, ctx = context
    attack = create_attack(suite.attacks[which])
    setup = ctx.setup(1)
    crafted = attack.craft(ctx, setup, seed=3, index=1)
    bases = ctx.data.train_x[list(setup.base_indices)].int()
    change = (crafted.poisons.images.int() - bases).abs()
    per_channel = torch.tensor(ctx.data.std).view(1, -1, 1, 1) * 0.04 * 255
    assert (change <= per_channel.ceil() + 1).all(), change.max()  # lr × std, one rounding step
    assert change.max() >= 1  # it did move
    assert change.float().mean() < 0.5 * 16  # not piled on the bound


def test_adam_on_normalized_units_steps_lr_times_scale_and_decays_at_milestones():
    """A constant gradient: signed or not, Adam's step is exactly lr per coordinate of its
    variable, i.e. lr × scale in pixels, and ×gamma from each milestone on."""
    anchor = torch.full((1, 2, 3, 3), 0.5)
    scale = torch.tensor([0.1, 0.3]).view(1, 2, 1, 1)

    def objective(x):
        return -x.flatten(1).sum(1)  # the gradient pushes every pixel up

    for iterations, expected in ((1, 1.0), (2, 2.0), (3, 2.1), (4, 2.2)):
        out = adam_descend(objective, anchor, anchor, 1.0, iterations=iterations, lr=0.01,
                           scale=scale, milestones=(2,), gamma=0.1)
        moved = (out.images - anchor) / scale
        assert torch.allclose(moved, torch.full_like(moved, 0.01 * expected), atol=1e-6), iterations
    assert out.loss_last is not None


@pytest.mark.slow
def test_convex_polytope_refit_meets_the_reference_tolerance():
    """The refit runs until a projected step changes the coefficients by less than 1e-6 relative
    (the point before that step is returned), far past the old fixed 20 steps on an
    ill-conditioned problem, and a warm start from the answer stops at once."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((8, 32)) * np.geomspace(1, 1e-2, 8)[:, None]  # ill-conditioned
    target = rng.standard_normal(32) * 0.1
    start = np.full(8, 1 / 8)
    c, steps = refit_coefficients(start, features, target, np.random.default_rng(1))
    assert steps > 20
    assert c.sum() == pytest.approx(1) and (c >= 0).all()
    # the tolerance holds at the returned point: one more projected gradient step barely moves it
    gram, linear = features @ features.T, features @ target
    step = 1 / np.linalg.eigvalsh(gram).max()
    after = project_simplex_np(c - step * (gram @ c - linear))
    assert np.linalg.norm(after - c) / np.linalg.norm(c) < 1e-5
    # and it is the optimum: a much longer, exact-step run lands at the same objective
    best = start
    for _ in range(200_000):
        best = project_simplex_np(best - step * (gram @ best - linear))
    def residual(v):
        return np.linalg.norm(features.T @ v - target)
    assert residual(c) == pytest.approx(residual(best), rel=1e-4)
    twenty, _ = refit_coefficients(start, features, target, np.random.default_rng(1), max_steps=20)
    assert residual(twenty) > residual(c) * (1 + 1e-4)  # 20 steps were not enough here
    _, warm = refit_coefficients(c, features, target, np.random.default_rng(2))
    assert warm < steps


# --- Feature Collision: the reference's lagged step rule --------------------------------------


def _bowl(x):
    """A quadratic whose gradient step with step size 1.25 overshoots: the loss rises."""
    return (x - 0.5).pow(2).flatten(1).sum(1)


def test_reference_feature_collision_rule_stops_at_the_first_rise():
    start = torch.full((2, 1, 1, 1), 0.6)
    anchor = torch.full((2, 1, 1, 1), 0.6)
    lagged = descend_lagged(_bowl, start, anchor, 1.0, iterations=50, step=1.25, decay=0.2)
    # step 1 from 0.6 lands at 0.35 (loss 0.0225 > 0.01); step 2 sees the rise and stops there
    assert torch.allclose(lagged.images, torch.full_like(start, 0.35), atol=1e-6)
    assert lagged.rose.all() and lagged.per_image_iterations.tolist() == [2, 2]
    assert lagged.iterations == 2 and bool((lagged.loss_final > lagged.loss_initial).all())
    refused = descend(_bowl, start, anchor, 1.0, iterations=50, step=1.25, decay=0.2)
    assert refused.rose.all()  # the same rise, refused: it goes on from the better point
    assert bool((refused.loss_final < 1e-3 * refused.loss_initial).all())


def test_reference_feature_collision_rule_takes_its_first_gradient_at_the_unprojected_blend():
    """ε = 1/255 would clip the blend; the first gradient is taken at the blend itself, and the
    relative-change stop ends a poison that no longer moves."""
    anchor = torch.full((1, 1, 2, 2), 0.2)
    start = torch.full((1, 1, 2, 2), 0.5)  # 0.3 from its base
    seen = []

    def objective(x):
        seen.append(float(x.detach().max()))
        return (x - 0.2).pow(2).flatten(1).sum(1) * 1e-9  # tiny gradients: it converges at once

    out = descend_lagged(objective, start, anchor, 1 / 255, iterations=50, step=1.0, decay=0.2)
    assert seen[1] == pytest.approx(0.5)  # (seen[0] is the initial loss, at the same point)
    assert out.per_image_iterations.tolist() == [2] and not out.rose.any()
    assert float(out.images.max()) == pytest.approx(0.2 + 1 / 255)  # moved, projected


def test_feature_collision_rows_say_how_many_iterations_ran_and_whether_a_rise_occurred(context):
    from raypoison.attacks.feature_collision import FeatureCollision

    _, ctx = context
    setup = ctx.setup(0)
    out = FeatureCollision(FeatureCollision.Params(iterations=300, step=0.5)).craft(
        ctx, setup, seed=1, index=0)
    assert out.loss_rose is True and 1 <= out.iterations < 300  # a big step rises early
    refuse = FeatureCollision(FeatureCollision.Params(iterations=40, step=0.5, step_rule="refuse"))
    again = refuse.craft(ctx, setup, seed=1, index=0)
    assert again.iterations == 40 and again.loss_final < out.loss_final


# --- Witches' Brew -----------------------------------------------------------------------------


def test_witches_brew_schedule_is_the_references():
    assert schedule_milestones(250) == (93, 156, 218)
    rates = [milestone_lr(0.1, i, schedule_milestones(250), 0.1) for i in (0, 92, 93, 155, 156, 218)]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.0001])


def test_witches_brew_keeps_the_restart_with_the_lowest_last_iteration_loss():
    """Scored by the loss of each restart's last iteration, as the reference does: here that
    order differs from the order of the losses after the last step."""
    def outcome(last, final):
        return CraftOutcome(torch.zeros(1), 1, torch.ones(1), torch.tensor([final]),
                            loss_last=torch.tensor([last]))
    outcomes = [outcome(0.5, 0.1), outcome(0.2, 0.9), outcome(0.3, 0.0)]
    assert best_restart(outcomes) is outcomes[1]


def test_witches_brew_starts_from_a_clipped_gaussian_and_its_augmentation_is_differentiable(context):
    from raypoison.data.augment import apply_shift_flip, draw_shift_flip

    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    fill = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    draws = torch.tensor([[0.5, 0.5, 0.0, 0.0],  # no shift, no flip: the image itself
                          [0.5, 0.5, 1.0, 0.0],  # flipped
                          [1.0, 0.5, 0.0, 0.0],  # 4 pixels right... in grid terms: samples x+4
                          [0.5, 0.5, 0.0, 0.0]])
    out = apply_shift_flip(x, draws, fill)
    assert torch.allclose(out[0], x[0], atol=1e-6)
    assert torch.allclose(out[1], x[1].flip(-1), atol=1e-6)
    assert torch.allclose(out[2, :, :, :4], x[2, :, :, 4:], atol=1e-6)
    assert torch.allclose(out[2, :, :, 4:], fill[0].expand(3, 8, 4), atol=1e-6)  # mean padding
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert draw_shift_flip(5, torch.Generator().manual_seed(0)).shape == (5, 4)

    suite, ctx = context
    from raypoison.attacks.witches_brew import WitchesBrew

    setup = ctx.setup(0)
    brew = WitchesBrew(WitchesBrew.Params(iterations=3, restarts=2))
    first = brew.craft(ctx, setup, seed=4, index=0)
    assert torch.equal(first.poisons.images, brew.craft(ctx, setup, seed=4, index=0).poisons.images)
    assert first.crafting_model == "net-a" and first.iterations == 6
    check = check_poisons(first.poisons, setup, ctx.data, suite.scenarios[0].epsilon, 3)
    assert check.valid, check.reason


def test_witches_brew_shifts_by_an_eighth_of_the_side_where_told(context):
    """The reference's shift is an index of ``linspace(0, 1, side)``: 8 of 32 on CIFAR, 16 of 64
    on Tiny-ImageNet, half an index a pixel; ``max_shift`` 8 is the latter's 8 pixels."""
    from raypoison.attacks.witches_brew import WitchesBrew
    from raypoison.data.augment import apply_shift_flip
    from raypoison.errors import ConfigError

    x = torch.rand(1, 3, 64, 64)
    fill = torch.zeros(1, 3, 1, 1)
    right = torch.tensor([[1.0, 0.5, 0.0, 0.0]])  # the largest shift along x, no flip
    out = apply_shift_flip(x, right, fill, max_shift=8.0)
    assert torch.allclose(out[..., :56], x[..., 8:], atol=1e-5)
    assert torch.allclose(out[..., 56:], torch.zeros(1, 3, 64, 8), atol=1e-5)
    reference_offset = torch.linspace(0, 1, 64)[16]  # RandomTransform(64, 64, shift=16).delta
    assert float(reference_offset) == pytest.approx(2 * 8.0 / (64 - 1))
    suite, ctx = context
    setup = ctx.setup(0)
    plain = dict(iterations=2, restarts=1)
    four, eight = (WitchesBrew(WitchesBrew.Params(**plain, max_shift=m)).craft(ctx, setup, 4, 0)
                   for m in (4.0, 8.0))
    assert not torch.equal(four.poisons.images, eight.poisons.images)
    with pytest.raises(ConfigError, match="max_shift: must be > 0"):
        WitchesBrew.Params(max_shift=0).validate("attacks[0].params")


def test_witches_brew_steps_in_the_units_of_the_std_it_is_given(context):
    """``step_std`` sets the step's length in pixels (the reference's own CIFAR-10 std in the
    benchmark configs); without it the data set's std, so giving that one changes nothing."""
    from raypoison.attacks.witches_brew import WitchesBrew
    from raypoison.errors import ConfigError

    suite, ctx = context
    setup = ctx.setup(0)
    plain = dict(iterations=8, restarts=1, augment=False)  # full-rate steps at iterations 0, 1

    def brew(times: float | None) -> torch.Tensor:
        std = None if times is None else tuple(times * v for v in ctx.data.std)
        crafted = WitchesBrew(WitchesBrew.Params(**plain, step_std=std)).craft(ctx, setup, 4, 0)
        assert check_poisons(crafted.poisons, setup, ctx.data, suite.scenarios[0].epsilon, 3).valid
        return crafted.poisons.images.int()

    default = brew(None)
    assert torch.equal(brew(1), default)
    # from the same start, longer steps end further from the default's poisons
    apart = [(brew(k) - default).abs().float().mean() for k in (2, 3)]
    assert 0 < apart[0] < apart[1]
    with pytest.raises(ConfigError, match="step_std: must be three positive numbers"):
        WitchesBrew.Params(step_std=(0.2, 0.2)).validate("attacks[0].params")
    with pytest.raises(ConfigError, match="step_std"):
        WitchesBrew.Params(step_std=(0.2, 0.0, 0.2)).validate("attacks[0].params")


def test_a_recipe_trains_with_the_references_shift_where_it_says_so():
    """``augmentation: shift``: the differentiable shift and flip Witches' Brew's reference trains
    its crafting models with, an eighth of the side, filled with the data set's mean."""
    import copy
    import dataclasses

    from raypoison.core.registry import build_component
    from raypoison.data import DATASETS, load_dataset
    from raypoison.data.augment import apply_shift_flip, draw_shift_flip
    from raypoison.errors import ConfigError
    from raypoison.models import build_model
    from raypoison.training.loop import _augmented, accuracy, train
    from raypoison.training.recipe import RecipeConfig
    from tests.conftest import TINY

    model = build_model("convnet", 4, (0.2, 0.4, 0.6), (0.25, 0.25, 0.25), 64, None)
    x = torch.rand(3, 3, 64, 64)
    shift = RecipeConfig(augmentation="shift")
    got = _augmented(x, shift, model, torch.Generator().manual_seed(5))
    draws = draw_shift_flip(3, torch.Generator().manual_seed(5))
    assert torch.equal(got, apply_shift_flip(x, draws, model.mean, max_shift=8.0))
    flat = torch.full((1, 3, 64, 64), 0.9)
    edge = _augmented(flat, shift, model, torch.Generator().manual_seed(5))
    assert torch.isclose(edge, model.mean.expand_as(edge), atol=1e-5).any()  # mean filled in

    data = load_dataset(build_component({"name": "synthetic", "params": {
        "classes": 4, "image_size": 16, "train_per_class": 40, "test_per_class": 20,
        "noise": 0.2, "seed": 3}}, "dataset", DATASETS))
    recipe = RecipeConfig(lr=0.05, epochs=6, milestones=(), batch_size=32)
    weights = {}
    for name in ("crop_flip", "shift", "shift again"):
        torch.manual_seed(0)
        net = build_model("convnet", 4, data.mean, data.std, 16, None)
        train(net, data.train_x, data.train_y, seed=1, trainable="all",
              recipe=dataclasses.replace(recipe, augmentation=name.split()[0]))  # type: ignore[arg-type]
        weights[name] = torch.cat([p.detach().flatten() for p in net.parameters()])
        assert accuracy(net, data.test_x, data.test_y) > 0.5  # learns: chance is 0.25
    assert torch.equal(weights["shift"], weights["shift again"])
    assert not torch.equal(weights["shift"], weights["crop_flip"])

    with pytest.raises(ConfigError, match="augmentation: says how to augment"):
        RecipeConfig(augment=False, augmentation="shift").validate("recipe")
    raw = copy.deepcopy(TINY)
    raw["scenarios"][0]["recipe"] = {"augmentation": "shift"}
    with pytest.raises(ConfigError, match="recipe.augmentation: 'shift' is for networks trained whole"):
        parse_suite(raw)
    raw["scenarios"][0]["mode"] = "scratch"
    raw["attacks"] = [{"name": "badnets", "params": {"poisons": 2}}]
    with pytest.raises(ConfigError, match="view: fixed stores one crop-and-flip view"):
        parse_suite(raw)
    raw["attacks"][0]["params"]["view"] = "augmented"
    assert parse_suite(raw).scenarios[0].training_recipe.augmentation == "shift"


# --- Hidden Trigger Backdoor -------------------------------------------------------------------


def test_hidden_trigger_backdoor_repairs_many_to_one_and_the_pairing_changes():
    a, b, c = [0.0, 0.0], [10.0, 0.0], [20.0, 0.0]
    goals = torch.tensor([a, b, c])
    # distances (goal rows × poison columns): [[1, 11.5, 12], [9, 1.5, 2], [19, 8.5, 8]]; the
    # three smallest entries give poison 0 goal a, poisons 1 and 2 both goal b (many-to-one:
    # a one-to-one pairing would have given poison 2 goal c)
    first = repair(goals, torch.tensor([[1.0, 0], [11.5, 0], [12.0, 0]]))
    assert first.tolist() == [a, b, b]
    # the poisons moved; against the current goals poison 0 is now nearest b
    second = repair(first, torch.tensor([[9.2, 0], [10.5, 0], [1.0, 0]]))
    assert second.tolist() == [b, b, b]
    # a poison never among the smallest entries keeps its goal; a poison picked twice keeps the
    # later (farther) pick
    third = repair(torch.tensor([a, b]), torch.tensor([[0.5, 0], [0.6, 0]]))
    assert third.tolist() == [a, a]
    # distances [[0.1, 0.2, 50], [9.9, 9.8, 40], [19.9, 19.8, 30]]: poison 1 is picked by a,
    # then by b; poison 2 never
    kept = repair(torch.tensor([a, b, c]), torch.tensor([[0.1, 0], [0.2, 0], [50.0, 0]]))
    assert kept.tolist() == [a, b, c]


def test_scheduled_descend_calls_the_pairing_before_every_step_and_stops_below():
    calls = []
    x0 = torch.full((1, 1, 1, 1), 0.9)
    out = scheduled_descend(lambda x: (x - 0.5).pow(2).flatten(1).sum(1) * 100, x0, x0, 1.0,
                            iterations=7, lr=0.001, decay=0.5, decay_every=2,
                            before_step=lambda x, _stopped: calls.append(float(x)))
    assert len(calls) == 7 and calls[0] == pytest.approx(0.9) and calls[1] < calls[0]
    assert out.iterations == 7


def test_a_stop_read_late_gives_the_outcome_of_stopping_at_once():
    """The stop below a loss is decided on the device and read every STOP_READ_EVERY
    iterations: the images, the iteration count and the losses are those of stopping at the
    iteration whose loss fell below, and ``before_step`` sees the flag from there on."""
    from raypoison.attacks.crafting import STOP_READ_EVERY, iterations_computed

    evaluations = []

    def objective(x):
        evaluations.append(1)
        return (x - 0.5).pow(2).flatten(1).sum(1) * 100

    x0 = torch.linspace(0.0, 0.45, 6).view(2, 3, 1, 1)
    losses = [float(objective(scheduled_descend(objective, x0, x0, 1.0, iterations=k, lr=0.001,
                                                decay=0.9, decay_every=5).images).sum())
              for k in range(1, 60)]
    k = STOP_READ_EVERY + 3  # its loss (before its step) is the one after k - 1 steps
    threshold = (losses[k - 2] + losses[k - 3]) / 2
    live: list[bool] = []
    evaluations.clear()
    out = scheduled_descend(objective, x0, x0, 1.0, iterations=59, lr=0.001, decay=0.9,
                            decay_every=5, stop_below=threshold,
                            before_step=lambda _x, stopped: live.append(not bool(stopped)))
    evaluated = len(evaluations)
    alone = scheduled_descend(objective, x0, x0, 1.0, iterations=k, lr=0.001, decay=0.9,
                              decay_every=5)
    assert out.iterations == k and torch.equal(out.images, alone.images)
    assert torch.equal(out.loss_final, alone.loss_final)
    assert torch.equal(out.loss_initial, alone.loss_initial)
    assert live == [True] * k + [False] * (2 * STOP_READ_EVERY - k)  # read at 2 × EVERY
    # the loop computed up to that read (and the final loss): what the device check divides by
    assert evaluated == iterations_computed(out.iterations, 59) + 1 == 2 * STOP_READ_EVERY + 1


def test_feature_collisions_rule_reads_its_stop_late_and_says_what_it_computed():
    """The reference rule stops an image at its first rise; the loop learns that every
    STOP_READ_EVERY iterations. Iterations, images and losses are those of stopping at once
    (the rule moves no stopped image), and ``iterations_computed`` counts what ran."""
    from raypoison.attacks.crafting import STOP_READ_EVERY, iterations_computed

    evaluations = []

    def objective(x):
        evaluations.append(1)
        return (x - 0.5).pow(2).flatten(1).sum(1)

    x0 = torch.tensor([0.1, 0.3]).view(2, 1, 1, 1)
    out = descend_lagged(objective, x0, x0, 1.0, iterations=100, step=1.5, decay=0.5)
    assert 0 < out.iterations < STOP_READ_EVERY and out.rose.all()  # overshoots, then rises
    computed = iterations_computed(out.iterations, 100)
    assert computed == STOP_READ_EVERY and len(evaluations) == 1 + computed + 1
    capped = descend_lagged(objective, x0, x0, 1.0, iterations=out.iterations, step=1.5,
                            decay=0.5)
    assert torch.equal(capped.images, out.images) and torch.equal(capped.loss_final,
                                                                  out.loss_final)
    assert torch.equal(capped.per_image_iterations, out.per_image_iterations)


def test_hidden_trigger_backdoor_reads_no_device_value_while_it_descends():
    """On the ``meta`` device (shapes, no values: any read raises), the re-pairing and the
    descent with its stop run every iteration up to the first read of the stop flag."""
    from raypoison.attacks.backdoors import repair
    from raypoison.attacks.crafting import STOP_READ_EVERY

    weight = torch.randn(8, 12, device="meta")
    goals = [torch.randn(5, 8, device="meta")]
    calls = []

    def re_pair(x, stopped):
        calls.append(1)
        goals[0] = torch.where(stopped, goals[0], repair(goals[0], x.flatten(1) @ weight.T))

    def objective(x):
        return (x.flatten(1) @ weight.T - goals[0]).pow(2).sum(1)

    x0 = torch.rand(5, 3, 2, 2, device="meta")
    with pytest.raises(RuntimeError, match="item.. cannot be called on meta"):
        scheduled_descend(objective, x0, x0, 0.1, iterations=3 * STOP_READ_EVERY, lr=0.01,
                          decay=0.9, decay_every=10, stop_below=1.0, before_step=re_pair)
    assert len(calls) == STOP_READ_EVERY


def test_hidden_trigger_backdoor_schedule_follows_the_data_set():
    from raypoison.attacks.backdoors import HiddenTriggerBackdoor

    params = HiddenTriggerBackdoor.Params()
    assert params.schedule("cifar10") == (0.95, 2000)
    assert params.schedule("imagefolder") == (0.95, 2000)
    assert params.schedule("tinyimagenet") == (0.5, 1000)
    assert HiddenTriggerBackdoor.Params(decay=0.9).schedule("tinyimagenet") == (0.9, 1000)


# --- The reference triggers ----------------------------------------------------------------------


def test_the_reference_triggers_are_shipped_and_the_backdoors_default_to_them():
    from raypoison.attacks.backdoors import CleanLabelBackdoor, HiddenTriggerBackdoor
    from raypoison.data.triggers import TriggerConfig, make_trigger, reference_trigger_path

    for name, size in (("clbd", 5), ("htbd", 5), ("htbd", 8)):
        path = reference_trigger_path(name)
        assert path.is_file() and (path.parent / "LICENSE.txt").is_file()
        with Image.open(path) as image:
            expected = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
        trigger = make_trigger(TriggerConfig(kind="reference", name=name), size)
        assert trigger.pattern.permute(1, 2, 0).numpy().tolist() == expected.tolist()
    with Image.open(reference_trigger_path("clbd")) as image:
        assert image.size == (5, 5)  # CLBD's 5x5 patch is the file itself
    assert CleanLabelBackdoor.Params().trigger == TriggerConfig(kind="reference", name="clbd")
    htbd = HiddenTriggerBackdoor.Params().trigger
    assert (htbd.kind, htbd.name, htbd.offset) == ("reference", "htbd", 5)
    region = make_trigger(htbd, 5).region(32, 32)
    assert (region[0].start, region[1].start) == (22, 22)  # the reference's start: 32 - 5 - 5


# --- Tiny-ImageNet ---------------------------------------------------------------------------------


def _png(path, value, mode="RGB", size=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode).save(path, format="PNG")


def _tiny_layout(root, classes=3, per_class=2, val_names=None):
    wnids = [f"n{i:08d}" for i in range(classes)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids))
    for c, w in enumerate(wnids):
        for k in range(per_class):
            _png(root / "train" / w / "images" / f"{w}_{k}.JPEG", 10 * c + k)
    names = val_names or [f"val_{i}" for i in range(classes)]
    lines = []
    for i, name in enumerate(names):
        _png(root / "val" / "images" / f"{name}.JPEG", 100 + i)
        lines.append(f"{name}.JPEG\t{wnids[i % classes]}\t0\t0\t4\t4")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines))
    return wnids


def _load_tiny(root, classes="all"):
    from tests.test_data import source

    return source("tinyimagenet", root=str(root), classes=classes)


def test_tinyimagenet_validation_set_is_in_the_references_text_order(tmp_path):
    names = ["val_2", "val_10", "val_100", "val_1", "val_0"]  # annotation order ≠ text order
    _tiny_layout(tmp_path, classes=5, val_names=names)
    data = _load_tiny(tmp_path)
    text_order = sorted(names)  # val_0, val_1, val_10, val_100, val_2
    assert text_order == ["val_0", "val_1", "val_10", "val_100", "val_2"]
    values = [int(v) for v in data.test_x[:, 0, 0, 0]]
    assert values == [100 + names.index(n) for n in text_order]  # PNG is lossless
    assert data.test_y.tolist() == [names.index(n) % 5 for n in text_order]
    assert data.train_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_tinyimagenet_refuses_missing_or_uneven_classes_and_missing_files(tmp_path):
    import shutil

    from raypoison.errors import DataError

    wnids = _tiny_layout(tmp_path / "a")
    shutil.rmtree(tmp_path / "a" / "train" / wnids[1])
    with pytest.raises(DataError, match=f"class folders of wnids.txt are missing.*{wnids[1]}"):
        _load_tiny(tmp_path / "a")

    wnids = _tiny_layout(tmp_path / "b")
    (tmp_path / "b" / "train" / wnids[2] / "images" / f"{wnids[2]}_0.JPEG").unlink()
    with pytest.raises(DataError, match=f"classes differ in size.*{wnids[2]} \\(1\\)"):
        _load_tiny(tmp_path / "b")

    wnids = _tiny_layout(tmp_path / "c")
    for f in (tmp_path / "c" / "train" / wnids[0] / "images").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="without JPEG images"):
        _load_tiny(tmp_path / "c")

    _tiny_layout(tmp_path / "d")
    (tmp_path / "d" / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(DataError, match="annotated images do not exist, e.g. val_1.JPEG"):
        _load_tiny(tmp_path / "d")

    _tiny_layout(tmp_path / "e")
    _png(tmp_path / "e" / "train" / "n99999999" / "images" / "n99999999_0.JPEG", 0)
    with pytest.raises(DataError, match="not in wnids.txt"):
        _load_tiny(tmp_path / "e")


def test_decoding_fills_one_array(tmp_path):
    from raypoison.data.files import decode_files
    from raypoison.errors import DataError

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        _png(paths[-1], 7 * i)
    out = decode_files(paths, "here")
    assert out.shape == (3, 3, 4, 4) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out[:, 0, 0, 0].tolist() == [0, 7, 14]
    _png(tmp_path / "big.png", 1, size=5)
    with pytest.raises(DataError, match="differ in size"):
        decode_files([*paths, tmp_path / "big.png"], "here")
    with pytest.raises(DataError, match="missing.png: listed but not readable"):
        decode_files([tmp_path / "missing.png"], "here")


# --- Trial folders with a trigger, and the reference's rounding --------------------------------------


def test_a_backdoor_trial_folder_round_trips_its_trigger(tmp_path):
    from raypoison.data.triggers import TriggerConfig, make_trigger, paste
    from raypoison.formats.trial_folder import TrialFolder, read_trial_folder, write_trial_folder

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8))
    target = torch.from_numpy(rng.integers(0, 256, (3, 32, 32), dtype=np.uint8))
    trigger = make_trigger(TriggerConfig(kind="reference", name="htbd", offset=5), 5)
    from raypoison.formats.trial_folder import patch_position

    patch, at = patch_position(trigger, 32, 32)
    assert at == (22, 22)
    write_trial_folder(tmp_path / "0", TrialFolder(images, (1, 1), (4, 9), target, 3, patch, at))
    stored = pickle.loads((tmp_path / "0" / "target.pickle").read_bytes())
    assert len(stored) == 4 and stored[2].shape == (3, 5, 5) and stored[3] == [22, 22]
    assert stored[2].dtype == np.float32 and stored[2].min() >= 0 and stored[2].max() <= 1
    back = read_trial_folder(tmp_path / "0")
    assert torch.equal(back.patch, trigger.pattern) and back.patch_at == (22, 22)
    assert torch.equal(paste(target[None], back.trigger()), paste(target[None], trigger))

    # the reference's own form: a torch tensor patch at another position (x = column, y = row)
    pil = Image.fromarray(target.permute(1, 2, 0).numpy())
    tensor_patch = torch.from_numpy(np.asarray(stored[2]))
    (tmp_path / "0" / "target.pickle").write_bytes(
        pickle.dumps((pil, 3, tensor_patch, [27, 20]), protocol=2))
    back = read_trial_folder(tmp_path / "0")
    assert back.patch_at == (27, 20)
    stamped = paste(target[None], back.trigger())[0]
    assert torch.equal(stamped[:, 20:25, 27:32], trigger.pattern)
    assert torch.equal(stamped[:, :20], target[:, :20])


def test_external_poisons_get_one_step_of_the_references_rounding(context, tmp_path):
    """A poison 9/255 from its base under ε = 8/255 passes, and its row says why; 10/255 does not."""
    from raypoison.attacks.external import External

    suite, ctx = context
    setup = ctx.setup(0)
    bases = ctx.data.train_x[list(setup.base_indices)].clone()
    epsilon = 8 / 255
    for moved, valid in ((9, True), (10, False)):
        poisons = bases.int()
        poisons[0, 0, 0, 0] = bases[0, 0, 0, 0] + (moved if bases[0, 0, 0, 0] < 128 else -moved)
        crafted = create_attack(suite.attacks[0]).craft(ctx, setup, seed=0, index=0).poisons
        crafted.images = poisons.to(torch.uint8)
        check = check_poisons(crafted, setup, ctx.data, epsilon, 3,
                              rounding_slack=External.rounding_slack)
        assert check.valid is valid, check.reason
        if valid:
            assert "9/255" in check.reason and "rounding" in check.reason
    strict = check_poisons(crafted, setup, ctx.data, epsilon, 3)
    assert not strict.valid
