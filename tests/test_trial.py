import dataclasses

import pytest
import torch

from raypoison.attacks.base import Poisons
from raypoison.attacks.crafting import descend, quantize
from raypoison.config.specs import expand
from raypoison.config.suite import parse_suite
from raypoison.data import load_dataset
from raypoison.data.augment import random_crop_flip
from raypoison.models import load_checkpoint
from raypoison.trial.context import TrialContext
from raypoison.trial.evaluate import check_poisons
from raypoison.trial.run import run_trial


@pytest.fixture
def ctx(tiny_raw, tiny_checkpoint):
    suite = parse_suite(tiny_raw)
    return suite, TrialContext.create(suite.scenarios[0], {"net-a": tiny_checkpoint})


def test_synthetic_data_is_deterministic_and_learnable(tiny_raw, tiny_checkpoint):
    component = parse_suite(tiny_raw).scenarios[0].dataset
    a, b = load_dataset(component), load_dataset(component)
    assert a.train_x.dtype == torch.uint8 and a.train_x.shape == (160, 3, 12, 12)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    _, meta = load_checkpoint(tiny_checkpoint)
    assert meta["clean_accuracy"] > 0.5  # 4 classes: chance is 0.25


def test_augmentation_crops_and_flips_per_image():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, g)
    assert out.shape == x.shape
    assert torch.equal(out, random_crop_flip(x, torch.Generator().manual_seed(0)))
    flips = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    for i in range(2):  # without padding, each image is itself or its mirror
        assert torch.equal(flips[i], x[i]) or torch.equal(flips[i], x[i].flip(-1))


def test_control_and_feature_collision_trials(ctx):
    suite, context = ctx
    specs = {(s.attack.label, s.index): s for s in expand(suite)}
    control = run_trial(specs[("none", 0)], context)
    fc = run_trial(specs[("feature_collision", 0)], context)
    for rows in (control, fc):
        assert len(rows) == 1
        row = rows[0]
        assert row["status"] == "ok", row["error"]
        assert row["poisons_valid"] and row["victim"] == "net-a" and row["role"] == "white-box"
        assert row["success"] == (row["target_pred"] == row["base_class"])
        assert row["success"] == (row["target_margin"] > 0)
        assert 0 <= row["clean_accuracy"] <= 1 and 0 <= row["poisons_fit"] <= 1
    # the control's "poisons" are its clean bases, which a trained head mostly fits
    assert control[0]["poisons_fit"] > 0.5
    assert control[0]["poison_linf"] == 0
    assert 0 < fc[0]["poison_linf"] <= 16 / 255 + 1e-9
    assert fc[0]["attack_loss_final"] < fc[0]["attack_loss_initial"]
    # the setup is the same for every attack
    assert control[0]["target_index"] == fc[0]["target_index"]
    assert control[0]["base_indices"] == fc[0]["base_indices"]


def test_crafting_loop_stays_in_the_ball_and_descends():
    torch.manual_seed(0)
    anchor = torch.rand(4, 3, 8, 8)
    goal = torch.rand(4, 3, 8, 8)

    def objective(x):
        return (x - goal).pow(2).flatten(1).sum(1)

    out = descend(objective, anchor, anchor, 8 / 255, iterations=30, step=0.5, decay=0.2)
    assert (out.loss_final < out.loss_initial).all()
    assert (out.images - anchor).abs().max() <= 8 / 255 + 1e-6
    stored = quantize(out.images, (anchor * 255).round().to(torch.uint8), 8 / 255)
    assert (stored.int() - (anchor * 255).round().int()).abs().max() <= 8


def test_poison_checks_name_the_reason(ctx):
    suite, context = ctx
    setup = context.setup(0)
    bases = context.data.train_x[list(setup.base_indices)]
    good = Poisons(bases.clone(), setup.base_indices, (setup.base_class,) * 3, setup.target_index)

    def check(p):
        return check_poisons(p, setup, context.data, 16 / 255, 3)

    assert check(good).valid
    far = bases.clone()
    far[0, 0, 0, 0] = 255 if far[0, 0, 0, 0] < 128 else 0
    cases = {
        "epsilon": dataclasses.replace(good, images=far),
        "count": dataclasses.replace(good, images=bases[:2], base_indices=setup.base_indices[:2]),
        "labels": dataclasses.replace(good, labels=(setup.target_class,) * 3),
        "indices": dataclasses.replace(good, base_indices=tuple(reversed(setup.base_indices))),
        "target": dataclasses.replace(good, target_index=setup.target_index + 1),
        "dtype": dataclasses.replace(good, images=bases.float()),
    }
    for reason, poisons in cases.items():
        result = check(poisons)
        assert not result.valid and result.reason.startswith(reason), (reason, result.reason)


def test_an_error_inside_a_trial_becomes_failure_rows(tiny_raw):
    suite = parse_suite(tiny_raw)
    context = TrialContext.create(suite.scenarios[0], {"net-a": b"not a checkpoint"})
    spec = next(s for s in expand(suite) if s.attack.label == "feature_collision")
    (row,) = run_trial(spec, context)
    assert row["status"] == "failed"
    assert row["error"].startswith("craft: DataError") and "not a readable checkpoint" in row["error"]
    assert row["target_index"] is not None  # the setup was known before the failure
    assert row["success"] is None


def test_banked_features_train_the_same_head_as_running_the_extractor(ctx):
    from raypoison.data.setups import clean_training_indices
    from raypoison.training.feature_bank import TrainingFeatures
    from raypoison.training.loop import train

    suite, context = ctx
    assert context.uses_feature_bank
    setup = context.setup(1)
    clean = torch.as_tensor(clean_training_indices(context.train_labels, setup, 12))
    poisons = context.data.train_x[list(setup.base_indices)]
    images = torch.cat([context.data.train_x[clean], poisons])
    labels = torch.cat([context.data.train_y[clean], torch.full((3,), setup.base_class)])
    recipe = suite.scenarios[0].training_recipe
    plain = context.fresh_victim("net-a", 5)
    train(plain, images, labels, recipe=recipe, seed=9, trainable="head")
    pool, row_of = context.feature_pool("net-a")
    assert pool.shape[:2] == (162, 4 * (12 + 3))
    banked = context.fresh_victim("net-a", 5)
    features = TrainingFeatures(pool, row_of[clean], context.model("net-a"), poisons)
    train(banked, images, labels, recipe=recipe, seed=9, trainable="head", features=features)
    assert torch.allclose(plain.head.weight, banked.head.weight, atol=1e-4)
    assert not torch.allclose(plain.head.weight, context.fresh_victim("net-a", 5).head.weight)
    # poisons trained on as stored (their own view): the bank's unaugmented view, the same head
    as_stored = torch.arange(len(labels)) >= len(clean)
    kept = context.fresh_victim("net-a", 5)
    train(kept, images, labels, recipe=recipe, seed=9, trainable="head", unaugmented=as_stored)
    kept_banked = context.fresh_victim("net-a", 5)
    train(kept_banked, images, labels, recipe=recipe, seed=9, trainable="head",
          features=features, unaugmented=as_stored)
    assert torch.allclose(kept.head.weight, kept_banked.head.weight, atol=1e-4)
    assert not torch.allclose(kept.head.weight, plain.head.weight, atol=1e-4)


def test_a_banked_head_reads_no_device_value_until_its_loss_is_read(ctx):
    """Victims, banks and labels on PyTorch's ``meta`` device, which holds shapes but no values:
    whatever reads a device value (``any()``, a boolean mask, ``.item()``), which on a GPU stops
    the host until the queued kernels have run, raises there. One head and two stacked heads
    train through every step, batches of pool rows and poisons mixed, and the first value read
    is the loss the loops read on purpose after their last step."""
    from raypoison.training.feature_bank import TrainingFeatures
    from raypoison.training.loop import train, train_heads

    suite, context = ctx
    recipe = suite.scenarios[0].training_recipe
    pool, row_of = context.feature_pool("net-a")
    lookups: list[str] = []

    class Counted(TrainingFeatures):
        def lookup(self, index, views):
            out = super().lookup(index, views)
            assert out.device.type == "meta" and out.shape == (len(index), pool.shape[2])
            lookups.append(index.device.type)
            return out

    def bank(model):  # 20 pool rows, then 3 poisons
        return Counted(pool.to("meta"), row_of[:20], model, context.data.train_x[:3].to("meta"))

    labels = torch.zeros(23, dtype=torch.long, device="meta")
    as_stored = torch.arange(23) >= 20
    steps = recipe.epochs * -(-23 // recipe.batch_size)
    model = context.fresh_victim("net-a", 5).to("meta")
    with pytest.raises(RuntimeError, match="item.. cannot be called on meta"):
        train(model, context.data.train_x[:23].to("meta"), labels, recipe=recipe, seed=1,
              trainable="head", features=bank(model), unaugmented=as_stored)
    assert lookups == ["cpu"] * steps  # every step ran, on the host's draws
    heads = [context.fresh_victim("net-a", 5).to("meta") for _ in range(2)]
    with pytest.raises(RuntimeError, match="item.. cannot be called on meta"):
        train_heads(heads, [labels, labels], recipe=recipe, seeds=[1, 2],
                    features=[bank(m) for m in heads], unaugmented=[None, as_stored])
    assert lookups == ["cpu"] * 3 * steps


@pytest.mark.parametrize("augmentation", ["crop_flip", "shift"])
def test_a_network_reads_no_device_value_until_its_loss_is_read(ctx, augmentation):
    """The whole-network path of the training loop on the ``meta`` device (see above): every
    step's augmentation, the samples kept as stored, forward and update run without reading a
    device value; the first read is the loss read on purpose after the last step."""
    from raypoison.training.loop import train

    suite, context = ctx
    recipe = dataclasses.replace(suite.scenarios[0].training_recipe, augmentation=augmentation)
    model = context.fresh_victim("net-a", 5).to("meta")
    batches: list[int] = []
    model.extractor.register_forward_pre_hook(lambda _module, args: batches.append(len(args[0])))
    with pytest.raises(RuntimeError, match="item.. cannot be called on meta"):
        train(model, context.data.train_x[:40].to("meta"),
              torch.zeros(40, dtype=torch.long, device="meta"), recipe=recipe, seed=1,
              unaugmented=(torch.arange(40) >= 30).to("meta"))
    assert len(batches) == recipe.epochs * -(-40 // recipe.batch_size)


def test_samples_marked_unaugmented_train_as_stored_and_leave_the_others_views_alone(ctx):
    """What the network sees in each batch, recorded by a forward pre-hook on a real extractor:
    with ``unaugmented``, the marked samples arrive exactly as stored, once per epoch, and every
    other sample gets the very view it gets without the mark (the random draws are the same)."""
    from raypoison.training.loop import train

    suite, context = ctx
    recipe = dataclasses.replace(suite.scenarios[0].training_recipe, epochs=2, batch_size=16)
    assert recipe.augment and recipe.adversarial is None
    images, labels = context.data.train_x[:40], context.data.train_y[:40]
    as_stored = torch.arange(40) >= 30

    def seen(unaugmented):
        model = context.fresh_victim("net-a", 3)
        batches: list[torch.Tensor] = []
        hook = model.extractor.register_forward_pre_hook(
            lambda _module, args: batches.append(args[0].detach().clone()))
        train(model, images, labels, recipe=recipe, seed=4, unaugmented=unaugmented)
        hook.remove()
        stored = (images.float().div(255) - model.mean) / model.std
        return torch.cat(batches), stored

    plain, stored = seen(None)
    kept, _ = seen(as_stored)
    assert plain.shape == kept.shape == (80, *images.shape[1:])
    differs = (plain != kept).flatten(1).any(1)
    as_marked = (kept[:, None] == stored[None, 30:]).flatten(2).all(2)  # [80 rows, 10 marked]
    assert as_marked.sum() == 20 and (as_marked.sum(0) == 2).all()  # each, once per epoch
    assert differs.any() and as_marked.any(1)[differs].all()  # only marked rows changed
    assert (plain[~as_marked.any(1)] == kept[~as_marked.any(1)]).all()


def test_a_head_trained_without_augmentation_banks_only_the_unaugmented_view(tiny_raw,
                                                                            tiny_checkpoint):
    import dataclasses

    from raypoison.data.setups import clean_training_indices
    from raypoison.training.loop import train

    tiny_raw["scenarios"][0]["recipe"]["augment"] = False
    scenario = parse_suite(tiny_raw).scenarios[0]
    context = TrialContext.create(scenario, {"net-a": tiny_checkpoint})
    assert context.uses_feature_bank
    pool, _ = context.feature_pool("net-a")
    assert pool.shape[:2] == (1, 4 * (12 + 3))
    setup = context.setup(1)
    clean = torch.as_tensor(clean_training_indices(context.train_labels, setup, 12))
    poisons = context.data.train_x[list(setup.base_indices)]
    images = torch.cat([context.data.train_x[clean], poisons])
    labels = torch.cat([context.data.train_y[clean], torch.full((3,), setup.base_class)])
    recipe = scenario.training_recipe
    plain = context.fresh_victim("net-a", 5)
    train(plain, images, labels, recipe=recipe, seed=9, trainable="head")
    banked = context.fresh_victim("net-a", 5)
    features = context.training_features("net-a", clean, poisons)
    train(banked, images, labels, recipe=recipe, seed=9, trainable="head", features=features)
    assert torch.allclose(plain.head.weight, banked.head.weight, atol=1e-4)
    with pytest.raises(ValueError, match="does not hold"):  # never a wrong view's features
        train(context.fresh_victim("net-a", 5), images, labels, trainable="head", seed=9,
              recipe=dataclasses.replace(recipe, augment=True), features=features)


def test_reference_trial_folders_are_imported_checked_and_evaluated(tmp_path, tiny_raw,
                                                                     tiny_checkpoint):
    from raypoison.formats.trial_folder import TrialFolder, read_trial_folder, write_trial_folder

    tiny_raw["attacks"] = [{"name": "external", "params": {"root": str(tmp_path)}}]
    suite = parse_suite(tiny_raw)
    context = TrialContext.create(suite.scenarios[0], {"net-a": tiny_checkpoint})
    specs = list(expand(suite))
    written = {}
    for spec in specs[:3]:
        setup = context.setup(spec.index)
        bases = context.data.train_x[list(setup.base_indices)]
        shifted = (bases.int() + 4).clamp(0, 255).to(torch.uint8)  # inside 16/255
        written[spec.index] = shifted
        folder = TrialFolder(shifted, (setup.base_class,) * 3, setup.base_indices,
                             context.data.test_x[setup.target_index], setup.target_class)
        if spec.index == 1:
            folder.labels = (setup.target_class,) * 3  # poisoned labels: not clean-label
        if spec.index == 2:
            folder.target_image = context.data.test_x[(setup.target_index + 1) % 40]
        write_trial_folder(tmp_path / str(spec.index), folder)
    assert torch.equal(read_trial_folder(tmp_path / "0").images, written[0])
    (ok,), (labels,), (target,) = (run_trial(s, context) for s in specs[:3])
    assert ok["status"] == "ok" and ok["poisons_valid"] and ok["poison_linf"] == 4 / 255
    assert ok["success"] is not None
    assert labels["status"] == "rejected" and labels["poison_check"].startswith("labels")
    assert target["status"] == "rejected" and target["poison_check"].startswith("target")
    (missing,) = run_trial(specs[3], context)
    assert missing["status"] == "failed" and "not a trial folder" in missing["error"]


def test_onecycle_schedule_warms_up_decays_and_trains(tiny_raw):
    """The one-cycle schedule rises to the peak lr over the warm-up, falls towards 0 by the last
    step, and trains the small ConvNet well above chance on the tiny data."""
    from raypoison.models import build_model
    from raypoison.training.loop import _schedule, accuracy, train
    from raypoison.training.recipe import RecipeConfig

    recipe = RecipeConfig(lr=0.1, epochs=10, milestones=(), schedule="onecycle", warmup=0.3,
                          batch_size=32)
    model = build_model("convnet", 4, (0.5,) * 3, (0.25,) * 3, image_size=12)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    schedule = _schedule(optimizer, recipe, steps_per_epoch=5)
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    peak = lrs.index(max(lrs))
    assert peak == 14 and max(lrs) == pytest.approx(0.1)  # 30% of 50 steps
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1], strict=True))
    assert all(a > b for a, b in zip(lrs[peak:-1], lrs[peak + 1:], strict=True))
    assert lrs[0] < 0.01 and lrs[-1] < 0.005

    data = load_dataset(parse_suite(tiny_raw).scenarios[0].dataset)
    train(model, data.train_x, data.train_y, recipe=recipe, seed=0)
    assert accuracy(model, data.test_x, data.test_y) > 0.6  # 4 classes: chance is 0.25
