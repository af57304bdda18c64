"""Pick your Poison's defenses as their authors' code computes them (Ben-Schneider-code/
Universal-Backdoor-Attacks), on constructed cases; and the trusted set as a share."""

import copy
import math

import pytest
import torch

from raypoison.config.suite import parse_suite
from raypoison.defenses import TrustedSet
from raypoison.defenses.trigger_inversion import CalibratedTriggerInversion, scoring_split
from raypoison.defenses.tuning import (
    RESNET18_PARAMETERS,
    PivotalTuning,
    mean_squared_distance,
    slol,
)
from raypoison.errors import ConfigError
from raypoison.models import build_model
from raypoison.trial.context import TrialContext
from tests.conftest import TINY


def test_slol_equals_the_hand_computed_value_of_a_constructed_batch():
    # two classes in two dimensions: tuned centroids (2, 0), (0, 3); frozen (1, 1), (1, 0)
    z = torch.tensor([[1.0, 0], [3, 0], [0, 2], [0, 4]])
    z0 = torch.tensor([[1.0, 1], [1, 1], [0, 0], [2, 0]])
    y = torch.tensor([0, 0, 1, 1])
    # C = MᵀM / 2 = [[2, 0], [0, 4.5]]; their C - diag(C) has entries C[i, j] - C[j, j]:
    # [[0, -4.5], [-2, 0]], norm sqrt(24.25); the one pair's centroid differences (2, -3) and
    # (0, 1) have cosine -3 / sqrt(13)
    pair = -3 / math.sqrt(13)
    assert float(slol(z, z0, y)) == pytest.approx(math.sqrt(24.25) + pair, abs=1e-6)
    assert float(slol(z, z0, y, fixed=True)) == pytest.approx(pair, abs=1e-6)
    # labels need not be 0..K-1 (absent classes are ignored). Three classes whose centroid
    # differences point as the frozen model's do: 3 pairs × cosine 1, a sum and not a mean,
    # and the frozen model's scale does not matter; C = [[2, 1], [1, 2]] / 3 with the diagonal
    # zeroed has norm sqrt(2) / 3
    z3, y3 = torch.tensor([[1.0, 0], [0, 1], [1, 1]]), torch.tensor([0, 5, 9])
    assert float(slol(z3, z3, y3, fixed=True)) == pytest.approx(math.sqrt(2) / 3 + 3, abs=1e-6)
    assert float(slol(z3, 2 * z3, y3, fixed=True)) == pytest.approx(math.sqrt(2) / 3 + 3,
                                                                    abs=1e-6)


@pytest.mark.parametrize("arch, size", [("convnet", 32), ("mobilenetv2", 32)])
def test_the_parameter_term_is_the_mean_over_the_models_own_parameters(arch, size):
    model = build_model(arch, 10, (0.5,) * 3, (0.25,) * 3, size)
    anchors = [p.detach().clone() for p in model.parameters()]
    moved = [p.detach() + 0.1 for p in model.parameters()]
    n = sum(p.numel() for p in anchors)
    assert float(mean_squared_distance(moved, anchors)) == pytest.approx(0.01, rel=1e-4)
    # the earlier rule divided by a ResNet-18's count whatever the model
    assert float(mean_squared_distance(moved, anchors, RESNET18_PARAMETERS)) == pytest.approx(
        0.01 * n / RESNET18_PARAMETERS, rel=1e-4)
    assert PivotalTuning.Params().param_mean == "own"


def test_the_defaults_are_the_authors():
    pt = PivotalTuning.Params()
    assert (pt.steps, pt.lr, pt.momentum, pt.weight_decay, pt.batch_size) == (
        2000, 1e-4, 0.9, 0.0, 128)
    assert (pt.feature_weight, pt.param_weight, pt.feature_loss) == (0.05, 2e4, "slol")
    cti = CalibratedTriggerInversion.Params()
    assert (cti.trigger, cti.steps, cti.lr, tuple(cti.betas), cti.init_scale) == (
        "additive", 50, 0.01, (0.5, 0.9), 0.01)
    assert (cti.keep_weight, cti.batch_size, cti.score_on) == (0.5, 128, "test")
    assert cti.repair == pt


def test_the_inversion_never_sees_the_images_it_is_scored_on():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 4, 4).clone()
    labels = torch.arange(20) % 4
    test = (100 + torch.arange(8, dtype=torch.uint8)).view(8, 1, 1, 1).expand(8, 3, 4, 4).clone()
    trusted = TrustedSet(images, labels, test_images=test, test_labels=torch.arange(8) % 4)
    fit, scored, _ = scoring_split(trusted, "test", seed=0)
    assert fit.all() and torch.equal(scored, test)  # fit on all trusted images, scored on test
    fit, scored, scored_labels = scoring_split(trusted, "trusted_half", seed=0)
    assert int(fit.sum()) == 10 and len(scored) == 10
    fitted = {int(v) for v in images[fit][:, 0, 0, 0]}
    assert fitted.isdisjoint(int(v) for v in scored[:, 0, 0, 0])
    assert torch.equal(scored_labels, labels[~fit])
    with pytest.raises(ValueError, match="test images"):
        scoring_split(TrustedSet(images, labels), "test", seed=0)


def test_a_trusted_share_of_the_training_set():
    raw = copy.deepcopy(TINY)  # 4 classes × 40 training images
    raw["scenarios"][0]["trusted"] = "10%"  # 16 images: 4 per class
    raw["defenses"] = ["pivotal_tuning"]
    suite = parse_suite(raw)
    assert suite.scenarios[0].trusted == pytest.approx(0.1)
    ctx = TrialContext.create(suite.scenarios[0], {})
    trusted = ctx.trusted_set()
    assert len(trusted) == 16 and torch.bincount(trusted.labels).tolist() == [4, 4, 4, 4]
    assert trusted.test_images is not None and len(trusted.test_images) == 40
    for bad, why in (("150%", r"in \(0, 1\)"), ("x%", "share like")):
        raw["scenarios"][0]["trusted"] = bad
        with pytest.raises(ConfigError, match=why):
            parse_suite(raw)
    raw["scenarios"][0].update(trusted=0.01, trusted_per_class=2)
    with pytest.raises(ConfigError, match="not both"):
        parse_suite(raw)


def test_rows_of_one_defense_label_with_other_parameters_are_never_pooled():
    import pandas as pd

    from raypoison.analysis.defense_report import separate_variants

    rows = pd.DataFrame({"defense": ["pivotal_tuning"] * 3 + ["strip"],
                         "defense_params": ['{"lr": 0.0001}', '{"lr": 0.0001}', '{"lr": 0.002}',
                                            "{}"]})
    labels = separate_variants(rows)["defense"].tolist()
    assert labels[0] == labels[1] != labels[2] and labels[3] == "strip"
    assert labels[0].startswith("pivotal_tuning [") and len(set(labels)) == 3


def test_neural_cleanse_as_the_authors_code_detects_it():
    """``neural_cleanse_additive`` (their ``neural_cleanse_detection.py``): an additive trigger
    per class from U[-0.005, 0.005), Adam 0.01 (0.5, 0.9), 50 steps of 128, λ 1e-4 on the L1 norm
    of the stamped batch's change; the score is the smallest trigger's L1 norm, negated."""
    from raypoison.defenses.trigger_inversion import NeuralCleanseAdditive, invert_additive

    p = NeuralCleanseAdditive.Params()
    assert (p.steps, p.lr, tuple(p.betas), p.init_scale, p.l1, p.batch_size, p.augment) == (
        50, 0.01, (0.5, 0.9), 0.01, 1e-4, 128, "flip")
    torch.manual_seed(0)
    model = build_model("convnet", 4, (0.5,) * 3, (0.25,) * 3, 8, {"width": 8}).eval()
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(40) % 4
    trusted = TrustedSet(images, labels)
    quick = NeuralCleanseAdditive.Params(steps=6, batch_size=16)
    x = images.float() / 255
    norms = [float(invert_additive(model, x[labels != c], c, quick, 3 + c).delta.abs().sum())
             for c in range(4)]
    assert NeuralCleanseAdditive(quick).detect(model, trusted, 3) == -min(norms)
    still = NeuralCleanseAdditive.Params(steps=1, lr=1e-12)  # the start, as drawn
    start = invert_additive(model, x[labels != 0], 0, still, 3).delta
    assert start.abs().max() <= 0.005 and start.abs().max() > 0.004  # U[-0.005, 0.005)
    heavy = NeuralCleanseAdditive.Params(steps=6, batch_size=16, l1=1.0)
    free = NeuralCleanseAdditive.Params(steps=6, batch_size=16, l1=0.0)
    sizes = [float(invert_additive(model, x[labels != 1], 1, q, 3).delta.abs().sum())
             for q in (heavy, free)]
    assert sizes[0] < sizes[1]  # the L1 term pulls the trigger in


def test_the_inversions_batches_are_the_authors_infinite_loader():
    """Shuffled passes, each drawn as it begins, the last batch of a pass smaller (CTI and the
    additive Neural Cleanse share it; CTI's draws are what they were before it was shared)."""
    from raypoison.defenses.trigger_inversion import _batches

    mine = torch.Generator().manual_seed(7)
    got = _batches(10, 4, mine, torch.device("cpu"))
    generator = torch.Generator().manual_seed(7)
    expected, order, position = [], torch.empty(0, dtype=torch.long), 0
    for _ in range(8):  # the loop CTI ran before: a new order once the last one is used up
        if position >= len(order):
            order, position = torch.randperm(10, generator=generator), 0
        expected.append((order[position:position + 4], torch.rand(2, generator=generator)))
        position += 4  # ... and each step's own draws (crops, the flip) after its batch
    assert [len(b) for b, _ in expected] == [4, 4, 2, 4, 4, 2, 4, 4]
    for want, draws in expected:
        assert torch.equal(next(got), want)
        assert torch.equal(torch.rand(2, generator=mine), draws)


def _tiny_resnet(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("resnet18", 4, (0.5,) * 3, (0.25,) * 3, 8, {"width": 4}).eval()


def test_nad_as_the_authors_code_distils_a_resnets_stem_and_first_three_stages():
    """``neural_attention_distillation_pyp`` (their ``neural_attention_distillation.py``):
    defaults, the attention map of ``criteria/attention.py``, and the maps it is taken of: the
    inputs of layer1-layer4, i.e. the stem's output and the first three stages' outputs."""
    from raypoison.defenses.tuning import (
        NeuralAttentionDistillationPyP,
        _stage_inputs,
        attention_map,
    )

    p = NeuralAttentionDistillationPyP.Params()
    assert (p.beta, p.p, p.teacher_steps, p.steps, p.lr, p.momentum, p.weight_decay,
            p.batch_size, p.augment) == (1000.0, 2.0, 500, 2000, 1e-4, 0.9, 0.0, 128, True)
    f = torch.tensor([[[[1.0, -2.0]], [[2.0, 0.0]]]])  # 1 × 2 channels × 1 × 2
    summed = torch.tensor([1.0 + 4.0, 4.0 + 0.0])  # Σ_c |f|²
    want = summed / (summed.norm() + 1e-6)
    assert torch.allclose(attention_map(f, 2.0).flatten(), want)
    model = _tiny_resnet()
    x = torch.rand(2, 3, 8, 8)
    captured = []
    hooks = [s.register_forward_hook(lambda m, i, o: captured.append(i[0]))
             for s in _stage_inputs(model)]
    with torch.no_grad():
        model.features(x)
        ex = model.extractor
        stem = torch.relu(ex.bn1(ex.conv1((x - model.mean) / model.std)))
        want = [stem, ex.layer1(stem)]
        want += [ex.layer2(want[-1])]
        want += [ex.layer3(want[-1])]
    for h in hooks:
        h.remove()
    assert [tuple(c.shape[1:]) for c in captured[:4]] == [(4, 8, 8), (4, 8, 8), (8, 4, 4),
                                                          (16, 2, 2)]
    assert all(torch.allclose(c, w) for c, w in zip(captured[:4], want, strict=True))
    convnet = build_model("convnet", 4, (0.5,) * 3, (0.25,) * 3, 8, {"width": 8})
    with pytest.raises(ValueError, match="ResNet.*neural_attention_distillation"):
        _stage_inputs(convnet)


def test_nad_as_the_authors_code_pulls_the_students_attention_to_the_teachers():
    """With ``beta`` 0 the student is plain step-counted fine-tuning (the teacher's steps are
    spent on another copy); with the attention term it ends nearer the teacher's maps."""
    from raypoison.defenses.tuning import (
        NeuralAttentionDistillationPyP,
        _stage_inputs,
        _stepwise,
        attention_map,
    )
    from raypoison.training.loop import train

    model = _tiny_resnet(1)
    images = torch.randint(0, 256, (48, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(48) % 4
    trusted = TrustedSet(images, labels)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quick = dict(teacher_steps=20, steps=12, batch_size=16, lr=0.05, augment=False)
    plain = NeuralAttentionDistillationPyP(
        NeuralAttentionDistillationPyP.Params(beta=0.0, **quick)).repair(model, trusted, 5)
    by_hand = copy.deepcopy(model)
    train(by_hand, images, labels, seed=6, trainable="all", max_steps=12,
          recipe=_stepwise(48, 12, 0.05, 0.9, 0.0, 16, False))
    assert all(torch.allclose(a, b) for a, b in zip(plain.state_dict().values(),
                                                     by_hand.state_dict().values(), strict=True))
    teacher = copy.deepcopy(model)
    train(teacher, images, labels, seed=5, trainable="all", max_steps=20,
          recipe=_stepwise(48, 20, 0.05, 0.9, 0.0, 16, False))
    pulled = NeuralAttentionDistillationPyP(
        NeuralAttentionDistillationPyP.Params(beta=100.0, **quick)).repair(model, trusted, 5)

    def maps(net, training):  # as the loss sees them: the student's BatchNorm in training mode
        out = []
        net = copy.deepcopy(net).train(training)
        for stage in _stage_inputs(net):  # on a throwaway copy
            stage.register_forward_hook(lambda m, i, o: out.append(attention_map(i[0], 2.0)))
        with torch.no_grad():
            net.features(images.float() / 255)
        return out

    def gap(net):
        return sum(float(((a - b) ** 2).mean()) for a, b in zip(maps(net, True),
                                                               maps(teacher, False), strict=True))
    assert gap(pulled) < 0.6 * gap(plain)  # measured: 0.055 against 0.134
    assert not model.training and not pulled.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_nad_as_the_authors_code_equals_their_loop_written_out_by_hand():
    """Their teacher and student loops written out plainly (SGD with Nesterov momentum, a new
    order each pass with the last batch short, the student in training mode and the frozen
    teacher in eval mode, hooks recording the inputs of layer1-layer4): the same weights and
    BatchNorm statistics, bit for bit, and no hook left on either model."""
    import torch.nn.functional as F

    from raypoison.defenses.tuning import NeuralAttentionDistillationPyP

    model = _tiny_resnet(2)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)  # passes of 16, 16, 8
    labels = torch.arange(40) % 4

    def amap(f):
        a = (f.abs() ** 2).sum(1, keepdim=True)
        return a / (torch.norm(a, dim=(2, 3), keepdim=True) + 1e-6)

    def loop(net, steps, seed, teacher=None, beta=0.0):
        net = copy.deepcopy(net)
        seen: dict[str, list] = {"s": [], "t": []}
        for who, m in (("s", net), ("t", teacher)) if teacher is not None else ():
            for i in range(1, 5):
                getattr(m.extractor, f"layer{i}").register_forward_hook(
                    lambda mod, inp, out, who=who: seen[who].append(inp[0]))
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        generator, done = torch.Generator().manual_seed(seed), 0
        while done < steps:
            for idx in torch.randperm(40, generator=generator).split(16):
                if done == steps:
                    break
                net.train()
                x = images[idx].float() / 255
                loss = F.cross_entropy(net(x), labels[idx])
                if teacher is not None:
                    with torch.no_grad():
                        teacher(x)
                    loss = loss + beta * sum(F.mse_loss(amap(s), amap(t))
                                             for s, t in zip(seen["s"], seen["t"], strict=True))
                    seen["s"].clear()
                    seen["t"].clear()
                opt.zero_grad()
                loss.backward()
                opt.step()
                done += 1
        return net

    teacher = loop(model, 7, 5).eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    want = loop(model, 9, 6, teacher, beta=100.0)
    params = NeuralAttentionDistillationPyP.Params(teacher_steps=7, steps=9, batch_size=16,
                                                   lr=0.05, beta=100.0, augment=False)
    got = NeuralAttentionDistillationPyP(params).repair(model, TrustedSet(images, labels), 5)
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(),
                                                 want.state_dict().values(), strict=True))
    assert not any(m._forward_hooks for net in (got, model) for m in net.modules())
