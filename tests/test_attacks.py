"""Each attack on tiny data: its objective falls, its poisons pass the checks, and it repeats."""

import pytest
import torch

from raypoison.attacks import create_attack
from raypoison.attacks.polytope import project_simplex_np, refit_coefficients
from raypoison.config.suite import parse_suite
from raypoison.trial.context import TrialContext
from raypoison.trial.evaluate import check_poisons

ATTACKS = [
    {"name": "feature_collision", "params": {"iterations": 30, "step": 0.01}},
    {"name": "convex_polytope", "params": {"iterations": 40, "lr": 0.01}},
    {"name": "bullseye_polytope", "params": {"iterations": 40, "lr": 0.01}},
    {"name": "witches_brew", "params": {"iterations": 15, "restarts": 2, "tau": 0.1}},
]


@pytest.fixture(scope="module")
def context(tiny_checkpoint):
    from tests.conftest import TINY

    suite = parse_suite({**TINY, "attacks": ATTACKS})
    return suite, TrialContext.create(suite.scenarios[0], {"net-a": tiny_checkpoint})


@pytest.mark.slow
@pytest.mark.parametrize("which", range(len(ATTACKS)), ids=[a["name"] for a in ATTACKS])
def test_attack_descends_stays_in_the_ball_and_repeats(context, which):
    suite, ctx = context
    attack = create_attack(suite.attacks[which])
    setup = ctx.setup(2)
    first = attack.craft(ctx, setup, seed=7, index=2)
    second = attack.craft(ctx, setup, seed=7, index=2)
    assert first.loss_final < first.loss_initial
    assert torch.equal(first.poisons.images, second.poisons.images)
    check = check_poisons(first.poisons, setup, ctx.data, suite.scenarios[0].epsilon, 3)
    assert check.valid, check.reason
    assert 0 < check.linf <= 16 / 255 + 1e-9


def test_simplex_projection_and_coefficient_refit():
    import numpy as np

    for v, expected in (([0.5, 0.5, 0.5], [1 / 3] * 3), ([2.0, -1.0, 0.0], [1.0, 0.0, 0.0]),
                        ([0.2, 0.3, 0.5], [0.2, 0.3, 0.5])):  # the last is on the simplex
        p = project_simplex_np(np.asarray(v))
        assert p.sum() == pytest.approx(1) and (p >= 0).all()
        assert np.allclose(p, expected)
    features = np.eye(3)
    target = np.asarray([0.2, 0.3, 0.5])  # inside the polytope: exactly recoverable
    c, _ = refit_coefficients(np.full(3, 1 / 3), features, target, np.random.default_rng(0))
    assert np.allclose(c, target, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("which", range(3), ids=[a["name"] for a in ATTACKS[:3]])
def test_crafting_in_a_batch_matches_crafting_one_by_one(context, which):
    suite, ctx = context
    attack = create_attack(suite.attacks[which])
    setups = [ctx.setup(i) for i in range(3)]
    together = attack.craft_many(ctx, setups, [1, 2, 3], [0, 1, 2])
    for i, setup in enumerate(setups):
        alone = attack.craft(ctx, setup, seed=i + 1, index=i)
        difference = (together[i].poisons.images.int() - alone.poisons.images.int()).abs()
        assert difference.max() <= 1, difference.max()  # a rounding step at most
        assert (difference > 0).float().mean() < 0.01  # and rarely
        assert together[i].loss_final == pytest.approx(alone.loss_final, rel=1e-3, abs=1e-6)


@pytest.fixture(scope="module")
def two_models(tiny_checkpoint):
    """The tiny scenario with a second attacker model, pre-trained from another seed."""
    import copy

    from raypoison.trial.pretrain import pretrain_checkpoint
    from tests.conftest import PRETRAIN, TINY

    raw = copy.deepcopy(TINY)
    scenario = raw["scenarios"][0]
    scenario["models"]["net-b"] = {"arch": "convnet", "pretrain": dict(PRETRAIN, seed=2)}
    parsed = parse_suite(raw).scenarios[0]
    checkpoints = {"net-a": tiny_checkpoint,
                   "net-b": pretrain_checkpoint(parsed.models["net-b"], parsed.dataset)}
    return raw, checkpoints


def _with_attacker(two_models, attacker, attacks, mode="transfer"):
    import copy

    raw, checkpoints = two_models
    raw = copy.deepcopy(raw)
    raw["scenarios"][0].update(attacker=attacker, mode=mode)
    raw["attacks"] = attacks
    suite = parse_suite(raw)
    return suite, TrialContext.create(suite.scenarios[0], checkpoints)


@pytest.mark.slow
@pytest.mark.parametrize("which", range(3), ids=[a["name"] for a in ATTACKS[:3]])
def test_an_ensemble_of_attackers_pulls_every_model_toward_the_target(two_models, which):
    """Crafted on net-a and net-b together, the poisons' features on net-b lie closer to the
    target's than when they are crafted on net-a alone; both roles are white-box."""
    suite, ensemble = _with_attacker(two_models, ["net-a", "net-b"], [ATTACKS[which]])
    _, single = _with_attacker(two_models, "net-a", [ATTACKS[which]])
    assert suite.scenarios[0].role("net-b") == "white-box"
    attack = create_attack(suite.attacks[0])
    setup = ensemble.setup(2)
    both = attack.craft(ensemble, setup, seed=7, index=2)
    alone = attack.craft(single, setup, seed=7, index=2)
    assert both.loss_final < both.loss_initial
    check = check_poisons(both.poisons, setup, ensemble.data, suite.scenarios[0].epsilon, 3)
    assert check.valid, check.reason
    net_b = ensemble.model("net-b")
    target = ensemble.data.test_x[setup.target_index:setup.target_index + 1].float() / 255
    with torch.no_grad():
        goal = net_b.features(target)

        def distance(images):
            return float((net_b.features(images.float() / 255).mean(0) - goal).norm())

        assert distance(both.poisons.images) < distance(alone.poisons.images)


@pytest.mark.slow
def test_witches_brew_crafts_each_trial_on_one_model_of_the_pool(two_models):
    brew = {"name": "witches_brew", "params": {"iterations": 8, "restarts": 1}}
    suite, pool = _with_attacker(two_models, ["net-a", "net-b"], [brew])
    attack = create_attack(suite.attacks[0])
    for index, name in ((0, "net-a"), (1, "net-b"), (2, "net-a")):
        _, alone = _with_attacker(two_models, name, [brew])
        setup = pool.setup(index)
        from_pool = attack.craft(pool, setup, seed=5, index=index)
        assert torch.equal(from_pool.poisons.images,
                           attack.craft(alone, setup, seed=5, index=index).poisons.images), index
    _, other = _with_attacker(two_models, "net-b", [brew])
    assert not torch.equal(attack.craft(pool, pool.setup(0), seed=5, index=0).poisons.images,
                           attack.craft(other, pool.setup(0), seed=5, index=0).poisons.images)


@pytest.mark.slow
def test_witches_brew_can_train_its_own_crafting_model_per_trial(two_models):
    from raypoison.attacks.witches_brew import WitchesBrew, train_crafting_model
    from raypoison.errors import ConfigError

    brew = {"name": "witches_brew", "params": {"iterations": 8, "restarts": 1,
                                               "fresh_model": True}}
    raw, checkpoints = two_models
    untrained = dict(raw, attacks=[brew])
    untrained["scenarios"] = [dict(raw["scenarios"][0], attacker="net-c", mode="scratch",
                                   models=dict(raw["scenarios"][0]["models"],
                                               **{"net-c": {"arch": "convnet",
                                                            "params": {"width": 8}}}))]
    parse_suite(untrained)  # a fresh model per trial needs no attacker weights
    with pytest.raises(ConfigError, match="crafts on the attacker"):
        parse_suite(dict(untrained, attacks=[{"name": "witches_brew"}]))
    with pytest.raises(ConfigError, match="transfer scenario") as info:  # not a scratch recipe
        parse_suite(dict(raw, attacks=[brew]))
    assert info.value.path == "attacks[0].params"

    suite, ctx = _with_attacker(two_models, "net-a", [brew], mode="scratch")
    attack = create_attack(suite.attacks[0])
    setup = ctx.setup(3)
    first = attack.craft(ctx, setup, seed=5, index=3)
    assert first.loss_final < first.loss_initial and first.crafted_on == ("net-a",)
    assert check_poisons(first.poisons, setup, ctx.data, suite.scenarios[0].epsilon, 3).valid
    assert torch.equal(first.poisons.images, attack.craft(ctx, setup, seed=5, index=3).poisons.images)
    pooled = WitchesBrew(WitchesBrew.Params(iterations=8, restarts=1))
    assert not torch.equal(first.poisons.images, pooled.craft(ctx, setup, seed=5, index=3).poisons.images)
    model = train_crafting_model(ctx, "net-a", setup, 3)  # trained: beats chance on the test set
    with torch.no_grad():
        predicted = model(ctx.data.test_x.float() / 255).argmax(1)
    assert (predicted == ctx.data.test_y).float().mean() > 0.5

    # ``model``: another architecture than the attacker's (the reference's Tiny-ImageNet poisons
    # came from a ResNet-34, its victims were VGG16s); a fresh one needs no weights
    own = dict(brew, params=dict(brew["params"], model="net-c"))
    scratch = dict(untrained, attacks=[own])
    scratch["scenarios"] = [dict(untrained["scenarios"][0], attacker="net-a")]
    other = parse_suite(scratch)
    from raypoison.execution import cost

    # the planner trains net-c's (narrower) architecture for it, not the attacker's
    [plan] = cost.plan_suite(other)
    [attackers] = cost.plan_suite(parse_suite(dict(scratch, attacks=[brew])))
    assert 0 < plan.cells[0].per_trial["craft"].flops < attackers.cells[0].per_trial["craft"].flops / 4
    net_c = TrialContext.create(other.scenarios[0], checkpoints)
    crafted = create_attack(other.attacks[0]).craft(net_c, setup, seed=5, index=3)
    assert crafted.crafted_on == ("net-c",) and crafted.crafting_model == "fresh net-c (trial 3)"
    assert not torch.equal(crafted.poisons.images, first.poisons.images)
    with pytest.raises(ConfigError, match="model: the scenario has no model 'net-z'"):
        parse_suite(dict(scratch, attacks=[dict(brew, params=dict(brew["params"], model="net-z"))]))
    with pytest.raises(ConfigError, match="has no trained model 'net-c'"):  # to craft on as it is
        parse_suite(dict(scratch, attacks=[{"name": "witches_brew", "params": {"model": "net-c"}}]))


@pytest.mark.slow
def test_witches_brew_on_an_ensemble_and_the_roles_of_a_pool(two_models):
    """An ensemble trial crafts on both models (unlike either alone); in a pool each trial's rows
    call white-box only the victim its poisons were crafted on."""
    import copy

    from raypoison.config.specs import expand
    from raypoison.errors import ConfigError
    from raypoison.trial.run import run_trial

    brew = {"name": "witches_brew", "params": {"iterations": 8, "restarts": 1}}
    both = dict(brew, params=dict(brew["params"], ensemble=True))
    suite, ctx = _with_attacker(two_models, ["net-a", "net-b"], [both])
    attack = create_attack(suite.attacks[0])
    setup = ctx.setup(0)
    crafted = attack.craft(ctx, setup, seed=5, index=0)
    assert crafted.crafted_on == ("net-a", "net-b") and crafted.loss_final < crafted.loss_initial
    for name in ("net-a", "net-b"):
        _, alone = _with_attacker(two_models, name, [brew])
        assert not torch.equal(crafted.poisons.images,
                               attack.craft(alone, setup, seed=5, index=0).poisons.images)
    with pytest.raises(ConfigError, match="cannot be combined"):
        _with_attacker(two_models, ["net-a", "net-b"],
                       [dict(brew, params=dict(brew["params"], ensemble=True, fresh_model=True))])

    raw, checkpoints = two_models
    raw = copy.deepcopy(raw)
    raw["scenarios"][0].update(attacker=["net-a", "net-b"], victims=["net-a", "net-b"])
    suite = parse_suite(dict(raw, attacks=[brew]))
    ctx = TrialContext.create(suite.scenarios[0], checkpoints)
    roles = {}
    for spec in list(expand(suite))[:2]:
        rows = run_trial(spec, ctx)
        assert {r["status"] for r in rows} == {"ok"}, rows[0]["error"]
        roles[spec.index] = {r["victim"]: r["role"] for r in rows}
    assert roles == {0: {"net-a": "white-box", "net-b": "black-box"},
                     1: {"net-a": "black-box", "net-b": "white-box"}}


@pytest.mark.slow
def test_feature_collision_l2_penalty_keeps_poisons_nearer_their_bases(context):
    """Poison Frogs' variant: with beta > 0 the poisons move less from their bases (the start is
    blended with the target, so the penalty pulls them back) and the loss still falls. The
    penalty is minimized by the refusing step rule; the reference's rule stops at its first rise,
    long before the penalty has pulled the poisons back."""
    from raypoison.attacks.feature_collision import FeatureCollision

    _, ctx = context
    setup = ctx.setup(2)
    bases = ctx.data.train_x[list(setup.base_indices)].float()
    moved = {}
    for beta in (0.0, 100.0):
        attack = FeatureCollision(FeatureCollision.Params(iterations=30, step=0.01, beta=beta,
                                                          step_rule="refuse"))
        out = attack.craft(ctx, setup, seed=7, index=2)
        assert out.loss_final < out.loss_initial
        moved[beta] = float((out.poisons.images.float() - bases).abs().mean())
    assert moved[100.0] < 0.5 * moved[0.0], moved  # about 5 against 15 uint8 steps
