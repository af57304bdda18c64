"""Each attack on tiny data: its objective falls, its poisons pass the checks, and it repeats."""

import pytest
import torch

from raypoison.attacks import create_attack
from raypoison.attacks.crafting import project_simplex
from raypoison.attacks.polytope import refit_coefficients
from raypoison.config import parse_suite
from raypoison.evaluate import check_poisons
from raypoison.trial import TrialContext

ATTACKS = [
    {"name": "feature_collision", "params": {"iterations": 30, "step": 0.01}},
    {"name": "convex_polytope", "params": {"iterations": 40, "lr": 0.01}},
    {"name": "bullseye_polytope", "params": {"iterations": 40, "lr": 0.01}},
    {"name": "witches_brew", "params": {"iterations": 15, "restarts": 2, "lr": 0.01}},
]


@pytest.fixture(scope="module")
def context(tiny_checkpoint):
    from tests.conftest import TINY

    suite = parse_suite({**TINY, "attacks": ATTACKS})
    return suite, TrialContext.create(suite.scenarios[0], {"net-a": tiny_checkpoint})


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
    v = torch.tensor([[0.5, 0.5, 0.5], [2.0, -1.0, 0.0], [0.2, 0.3, 0.5]])
    p = project_simplex(v)
    assert torch.allclose(p.sum(-1), torch.ones(3)) and (p >= 0).all()
    assert torch.allclose(p[1], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(p[2], v[2])  # already on the simplex
    features = torch.eye(3)
    target = torch.tensor([0.2, 0.3, 0.5])  # inside the polytope: exactly recoverable
    c = refit_coefficients(torch.full((3,), 1 / 3), features, target, steps=200)
    assert torch.allclose(c, target, atol=1e-4)


@pytest.mark.parametrize("which", range(3), ids=[a["name"] for a in ATTACKS[:3]])
def test_crafting_in_a_batch_matches_crafting_one_by_one(context, which):
    suite, ctx = context
    attack = create_attack(suite.attacks[which])
    setups = [ctx.setup(i) for i in range(3)]
    together = attack.craft_batch(ctx, setups, [1, 2, 3], [0, 1, 2])
    for i, setup in enumerate(setups):
        alone = attack.craft(ctx, setup, seed=i + 1, index=i)
        difference = (together[i].poisons.images.int() - alone.poisons.images.int()).abs()
        assert difference.max() <= 1, difference.max()  # a rounding step at most
        assert (difference > 0).float().mean() < 0.01  # and rarely
        assert together[i].loss_final == pytest.approx(alone.loss_final, rel=1e-3, abs=1e-6)
