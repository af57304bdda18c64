"""Triggers, the two backdoor attacks, and the backdoor evaluation on tiny data."""

import json

import pytest
import torch

from raypoison.attacks import create_attack
from raypoison.config.specs import expand
from raypoison.config.suite import parse_suite
from raypoison.data.triggers import TriggerConfig, make_trigger, paste
from raypoison.errors import ConfigError
from raypoison.training.loop import predict
from raypoison.trial.context import TrialContext
from raypoison.trial.evaluate import check_poisons, evaluate_victim
from raypoison.trial.run import run_trial
from tests.conftest import TINY

BACKDOORS = [
    {"name": "clean_label_backdoor", "params": {"steps": 5, "trigger": {"kind": "checkerboard"}}},
    {"name": "hidden_trigger_backdoor", "params": {"iterations": 40, "lr": 0.01,
                                                   "decay_every": 20, "stop_below": 0.0}},
    {"name": "none", "label": "trigger-only", "params": {"trigger": {"seed": 3}}},
]


@pytest.fixture(scope="module")
def context(tiny_checkpoint):
    suite = parse_suite({**TINY, "attacks": BACKDOORS})
    return suite, TrialContext.create(suite.scenarios[0], {"net-a": tiny_checkpoint})


@pytest.mark.parametrize("corner, offset, rows, cols", [
    ("bottom-right", 0, (7, 12), (7, 12)), ("bottom-right", 5, (2, 7), (2, 7)),
    ("top-left", 1, (1, 6), (1, 6)), ("top-right", 0, (0, 5), (7, 12)),
    ("bottom-left", 2, (5, 10), (2, 7))])
def test_trigger_lands_where_specified(corner, offset, rows, cols):
    trigger = make_trigger(TriggerConfig(kind="random", seed=4, corner=corner, offset=offset), 5)
    images = torch.zeros(2, 3, 12, 12, dtype=torch.uint8)
    out = paste(images, trigger)
    assert torch.equal(out[:, :, rows[0]:rows[1], cols[0]:cols[1]],
                       trigger.pattern.expand(2, 3, 5, 5))
    out[:, :, rows[0]:rows[1], cols[0]:cols[1]] = 0
    assert not out.any() and not images.any()  # nothing else changed, input untouched
    as_float = paste(images.float() / 255, trigger)
    assert torch.equal((as_float * 255).round().to(torch.uint8), paste(images, trigger))
    assert torch.equal(make_trigger(TriggerConfig(seed=4), 5).pattern, trigger.pattern)
    with pytest.raises(ValueError, match="does not fit"):
        paste(images, make_trigger(TriggerConfig(offset=9), 5))


def test_trigger_from_a_file_is_resized(tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "t.png")
    trigger = make_trigger(TriggerConfig(kind="file", path=str(tmp_path / "t.png")), 5)
    assert trigger.pattern.shape == (3, 5, 5)
    assert trigger.pattern[0].min() == 255 and trigger.pattern[1:].max() == 0


def test_a_translucent_patch_mixes_into_the_pixels_it_covers_and_nowhere_else(tmp_path):
    """The "Pick your Poison" group's BadNets: an image mark at the top-left, opacity 0.2."""
    from PIL import Image

    Image.new("RGB", (20, 20), (255, 255, 255)).save(tmp_path / "mark.png")
    cfg = TriggerConfig(kind="file", path=str(tmp_path / "mark.png"), corner="top-left",
                        opacity=0.2)
    trigger = make_trigger(cfg, 3)
    images = torch.full((2, 3, 8, 8), 100, dtype=torch.uint8)
    out = paste(images, trigger)
    assert (out[:, :, :3, :3] == 131).all()  # 0.8 * 100 + 0.2 * 255 = 131
    out[:, :, :3, :3] = 100
    assert torch.equal(out, images)
    as_float = paste(images.float() / 255, trigger)
    assert torch.allclose(as_float[:, :, :3, :3], torch.tensor(0.8 * 100 / 255 + 0.2))
    # an opaque patch's description (so its rows and ids) is what it was before opacity
    opaque = make_trigger(TriggerConfig(kind="checkerboard"), 3)
    assert "opacity" not in json.loads(opaque.description)
    assert json.loads(trigger.description)["opacity"] == 0.2
    assert paste(images, make_trigger(TriggerConfig(kind="file", path=cfg.path,
                                                    corner="top-left"), 3))[0, 0, 0, 0] == 255
    # the reference trial folder's patch replaces pixels, so a translucent one is not exported
    from raypoison.formats.trial_folder import patch_position

    assert patch_position(trigger, 8, 8) is None
    assert patch_position(opaque, 8, 8) is not None


@pytest.mark.parametrize("trigger, message", [
    ({"opacity": 0}, "opacity: must be in"), ({"opacity": 1.5}, "opacity: must be in"),
    ({"style": "blend", "opacity": 0.5}, "opacity: is a patch's; a blend trigger has its own"),
])
def test_an_opacity_outside_a_patch_or_its_range_is_refused(trigger, message):
    name = "blend" if trigger.get("style") == "blend" else "badnets"
    attacks = [{"name": name, "params": {"poisons": 2, "trigger": trigger}}]
    with pytest.raises(ConfigError, match=message):
        parse_suite({**TINY, "attacks": attacks})


@pytest.mark.slow
@pytest.mark.parametrize("which", range(2), ids=["clbd", "htbd"])
def test_backdoor_poisons_stay_in_the_ball_and_repeat(context, which):
    suite, ctx = context
    attack = create_attack(suite.attacks[which])
    setup = ctx.setup(1)
    first = attack.craft(ctx, setup, seed=5, index=1)
    second = attack.craft(ctx, setup, seed=5, index=1)
    assert torch.equal(first.poisons.images, second.poisons.images)
    check = check_poisons(first.poisons, setup, ctx.data, 16 / 255, 3)
    assert check.valid and check.linf <= 16 / 255 + 1e-9, check.reason
    assert first.trigger is not None
    if which == 0:  # PGD raised the adversarial model's loss on the bases
        assert first.loss_final > first.loss_initial
    else:  # the hidden-trigger objective fell
        assert first.loss_final < first.loss_initial
    assert not torch.equal(attack.craft(ctx, setup, seed=6, index=1).poisons.images,
                           first.poisons.images)


def test_evaluation_pastes_the_trigger_like_the_attack(context):
    suite, ctx = context
    setup = ctx.setup(0)
    model = ctx.fresh_victim("net-a", 0)
    trigger = make_trigger(TriggerConfig(kind="checkerboard"), 5)
    members = torch.nonzero(ctx.data.test_y == setup.target_class).flatten()
    expected = predict(model, paste(ctx.data.test_x[members], trigger))
    for banked in (False, True):
        outcome = evaluate_victim(
            model, ctx.data, setup, trigger=trigger,
            test_features=ctx.test_features("net-a") if banked else None,
            triggered_features=(ctx.triggered_features("net-a", setup, trigger)
                                if banked else None))
        position = int((members == setup.target_index).nonzero()[0, 0])
        assert outcome.target_pred == int(expected[position])
        assert outcome.attack_success_rate == pytest.approx(
            float((expected == setup.base_class).float().mean()))


@pytest.mark.slow
def test_backdoor_trials_record_trigger_and_attack_success_rate(context):
    suite, ctx = context
    specs = [s for s in expand(suite) if s.index == 0]
    for spec in specs:
        (row,) = run_trial(spec, ctx)
        assert row["status"] == "ok", row["error"]
        assert 0 <= row["attack_success_rate"] <= 1
        assert json.loads(row["trigger"])["size"] == 5
        assert row["success"] == (row["target_margin"] > 0)  # the triggered target's margin


def test_an_attack_model_missing_from_a_scenario_is_a_config_error():
    raw = {**TINY, "attacks": [{"name": "clean_label_backdoor", "params": {"model": "adv"}}]}
    with pytest.raises(ConfigError, match="no trained model 'adv'") as info:
        parse_suite(raw)
    assert info.value.path == "attacks[0].params.model"
