"""The cost planner counts FLOPs of real steps and scales loop counts exactly."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from raypoison.attacks import create_attack
from raypoison.attacks.context import StandaloneContext
from raypoison.cli import main
from raypoison.config.suite import parse_suite
from raypoison.data.setups import Setup
from raypoison.execution import cost, device_rates


@dataclasses.dataclass(frozen=True)
class Inner:
    steps: int = 3


@dataclasses.dataclass(frozen=True)
class Loops:
    iterations: int = 5
    inner: Inner = Inner()
    width: int = 16  # not a loop count: left alone


def _work(p: Loops) -> None:
    x = torch.randn(p.width, p.width)
    y = x @ x  # a fixed cost
    for _ in range(p.iterations):
        y = y @ x
    for _ in range(p.inner.steps):
        y = (y @ x) @ x


def test_extrapolation_from_one_and_two_iterations_is_exact_for_nested_loops():
    assert list(cost.loop_fields(Loops())) == [("iterations",), ("inner", "steps")]
    for p in (Loops(), Loops(iterations=40, inner=Inner(steps=7)), Loops(iterations=1)):
        direct = cost.counted(lambda p=p: _work(p))
        assert cost.extrapolated(p, _work).flops == pytest.approx(direct, rel=1e-9)
    # and it does count: more iterations, more FLOPs
    assert cost.extrapolated(Loops(iterations=40), _work).flops > \
        cost.extrapolated(Loops(), _work).flops


def test_every_loop_count_of_a_defense_is_scaled():
    from raypoison.defenses.tuning import NeuralAttentionDistillationPyP

    params = NeuralAttentionDistillationPyP.Params()
    assert list(cost.loop_fields(params)) == [("teacher_steps",), ("steps",)]
    once = cost.looping_once(params)
    assert (once.teacher_steps, once.steps) == (1, 1)


def test_feature_collision_crafting_counts_what_crafting_at_full_length_executes(
        tiny_raw, tiny_checkpoint):
    scenario = parse_suite(tiny_raw).scenarios[0]
    shape = cost.Shape(4, 3, 12, 160, 40, (0.5,) * 3, (0.5,) * 3)
    attack = create_attack("feature_collision", {"iterations": 12, "step": 0.01,
                                                 "step_rule": "refuse"})
    data = cost.random_data(shape, 5)
    ctx = StandaloneContext(data, {"net-a": cost._frozen(cost.fresh(scenario.models["net-a"],
                                                                    shape))},
                            epsilon=16 / 255)
    setup = Setup(target_class=0, target_index=0, base_class=1, base_indices=(5, 6, 7))
    full = cost.counted(lambda: attack.craft(ctx, setup, 0, 0))
    planned = cost.extrapolated(attack.params,
                                lambda p: type(attack)(p).craft(ctx, setup, 0, 0)).flops
    assert planned == pytest.approx(full, rel=1e-6)


def test_a_plan_counts_every_phase_and_scales_with_the_config(tiny_raw):
    tiny_raw["attacks"] = [{"name": "none"},
                           {"name": "feature_collision", "label": "fc10",
                            "params": {"iterations": 10, "step": 0.01}},
                           {"name": "feature_collision", "label": "fc40",
                            "params": {"iterations": 40, "step": 0.01}}]
    [plan] = cost.plan_suite(parse_suite(tiny_raw))
    cells = {c.attack: c for c in plan.cells}
    assert plan.shared["pretrain"].flops > 0 and plan.shared["bank"].flops > 0
    assert cells["none"].per_trial["craft"].flops == 0
    ten, forty = (cells[a].per_trial["craft"].flops for a in ("fc10", "fc40"))
    assert 3.5 < forty / ten < 4.05  # the loop dominates; a small fixed part
    assert cells["none"].per_trial["train"].flops == cells["fc10"].per_trial["train"].flops > 0
    recipe = parse_suite(tiny_raw).scenarios[0].training_recipe
    assert cells["none"].per_trial["train"].steps >= recipe.epochs * 48 // recipe.batch_size


def test_an_attack_with_its_own_poison_count_is_counted_on_the_planners_sample(tiny_raw):
    """BadNets names its poison count itself: the planner must craft its counted sample, not
    500 poisons from a sample of 27 images a class (that raised)."""
    tiny_raw["attacks"] = [{"name": "badnets", "params": {"poisons": 30}}]
    suite = parse_suite(tiny_raw)
    attack = suite.attacks[0]
    attack = dataclasses.replace(attack, params=dataclasses.replace(attack.params, poisons=500))
    shape = cost.Shape(10, 3, 32, 50_000, 10_000, (0.5,) * 3, (0.5,) * 3)
    count, _, _ = cost.crafting(attack, suite.scenarios[0], shape)
    assert count.flops >= 0
    [plan] = cost.plan_suite(suite)
    assert [c.attack for c in plan.cells] == ["badnets"]


def test_plan_prints_the_table_and_refuses_an_unknown_device(tiny_raw, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(tiny_raw))
    assert main(["plan", str(config), "--device", "a100", "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "| feature_collision | 4 |" in out and "| none | 4 |" in out
    assert "Whole config:" in out and "on 2 GPU(s) (8 workers)" in out
    assert main(["plan", str(config), "--device", "a100", "--gpus", "2", "--compute"]) == 0
    assert capsys.readouterr().out == out  # the arithmetic done: the same counts
    assert main(["plan", str(config), "--device", "tpu9"]) == 2
    assert "unknown device 'tpu9'" in capsys.readouterr().err


def test_a_plan_says_what_each_defense_costs_and_plans_only_those_named(tiny_raw, tmp_path,
                                                                        capsys):
    tiny_raw["scenarios"][0]["trusted_per_class"] = 2
    tiny_raw["attacks"] = [{"name": "none"}]
    tiny_raw["defenses"] = [{"name": "fine_tuning", "label": "ft2", "params": {"epochs": 2}},
                            {"name": "fine_tuning", "label": "ft6", "params": {"epochs": 6}},
                            {"name": "spectral_signatures"}]
    suite = parse_suite(tiny_raw)
    [plan] = cost.plan_suite(suite)
    assert list(plan.defenses) == ["ft2", "ft6", "spectral_signatures"]
    [cell] = plan.cells
    total = sum((c.flops for c in plan.defenses.values()), 0.0)
    assert cell.per_trial["defend"].flops == pytest.approx(total) and total > 0
    assert 2 < plan.defenses["ft6"].flops / plan.defenses["ft2"].flops < 3  # 6 epochs vs 2
    [only] = cost.plan_suite(suite, defenses=["ft6"])
    assert list(only.defenses) == ["ft6"]
    assert only.cells[0].per_trial["defend"].flops == pytest.approx(plan.defenses["ft6"].flops)
    [bare] = cost.plan_suite(suite, defenses=["none"])
    assert bare.defenses == {} and bare.cells[0].per_trial["defend"].flops == 0

    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(tiny_raw))
    assert main(["plan", str(config), "--defenses", "ft2,spectral_signatures"]) == 0
    out = capsys.readouterr().out
    assert "| defense (every victim) | FLOPs / trial | s / trial |" in out
    assert "| ft2 |" in out and "| spectral_signatures |" in out and "| ft6 |" not in out
    assert main(["plan", str(config), "--defenses", "strip"]) == 2
    assert "unknown name 'strip'" in capsys.readouterr().err


@pytest.mark.parametrize("name, n_train", [("strip", 1000), ("strip", 130), ("strip", 4), ("strip", 3),
                                           ("strip", 1003), ("spectral_signatures", 1000)])
def test_flagging_a_training_set_is_counted_as_flagging_all_of_it(tiny_raw, name, n_train):
    """STRIP scores the trusted set once a trial and each training image: scaling one sample's
    whole count by the training set's size multiplied the fixed part too (its plan was 2.7 times
    a measured trial). Two samples and a line equal flagging every image."""
    from raypoison.core.registry import build_component
    from raypoison.defenses import DEFENSES, TrainingSet, TrustedSet

    scenario = parse_suite(tiny_raw).scenarios[0]
    shape = cost.Shape(4, 3, 12, 2000, 40, (0.5,) * 3, (0.5,) * 3)
    model = cost._frozen(cost.fresh(scenario.models["net-a"], shape))
    defense = DEFENSES.get(name)(build_component(name, "defense", DEFENSES).params)
    trusted_data = cost.random_data(shape, 30)  # a large fixed part
    trusted = TrustedSet(trusted_data.train_x, trusted_data.train_y,
                         test_images=trusted_data.test_x, test_labels=trusted_data.test_y)
    planned = cost.flagging(defense, model, trusted, shape, n_train)
    everything = cost.random_data(shape, -(-n_train // shape.classes))
    direct = cost.counted(lambda: defense.flag(
        TrainingSet(everything.train_x[:n_train], everything.train_y[:n_train]), model,
        trusted, 0))
    assert direct > 0
    assert planned == pytest.approx(direct, rel=1e-6)


def test_a_backdoors_evaluation_is_counted_as_a_trial_scores_its_victims(tiny_raw):
    """A trial scores each victim on the test set and, for an attack with a trigger, on the
    triggered test images its scope counts; each repaired victim the same. The plan counted the
    clean pass only (the CPU config's evaluation took 3.3 times its plan)."""
    from raypoison.core.registry import build_component
    from raypoison.data.triggers import TriggerConfig, make_trigger
    from raypoison.defenses import DEFENSES
    from raypoison.trial.evaluate import evaluate_victim

    scenario = tiny_raw["scenarios"][0]
    scenario.update(mode="scratch", models={"net-a": {"arch": "convnet"}}, trusted_per_class=2,
                    asr_scope="other_classes", patch_size=3)
    tiny_raw["attacks"] = [{"name": "none"}, {"name": "badnets", "params": {"poisons": 4}}]
    tiny_raw["defenses"] = [{"name": "fine_tuning", "params": {"epochs": 1}},
                            "spectral_signatures"]
    suite = parse_suite(tiny_raw)
    [plan] = cost.plan_suite(suite)
    cells = {c.attack: c.per_trial for c in plan.cells}

    shape = plan.shape
    config = suite.scenarios[0]
    model = cost._frozen(cost.fresh(config.models["net-a"], shape))
    data = cost.random_data(shape, 1, test_per_class=shape.test // shape.classes)
    setup = Setup(target_class=0, target_index=0, base_class=1, base_indices=())
    trigger = make_trigger(TriggerConfig(kind="checkerboard"), 3)
    clean = cost.counted(lambda: evaluate_victim(model, data, setup, asr_scope="other_classes"))
    both = cost.counted(lambda: evaluate_victim(model, data, setup, trigger=trigger,
                                                asr_scope="other_classes"))
    assert both > clean > 0
    assert cells["none"]["eval"].flops == pytest.approx(clean)
    assert cells["badnets"]["eval"].flops == pytest.approx(both)

    # fine-tuning repairs: its cost includes scoring the repaired victim, the triggered images
    # too under a backdoor; spectral signatures only flags
    defense = build_component({"name": "fine_tuning", "params": {"epochs": 1}}, "d", DEFENSES)
    alone = cost.defending(defense, config, shape, "net-a", cost.train_size(config, shape))
    assert plan.defenses["fine_tuning"].flops == pytest.approx(alone.flops + clean)
    assert cells["none"]["defend"].flops == pytest.approx(sum(
        c.flops for c in plan.defenses.values()))
    assert cells["badnets"]["defend"].flops == pytest.approx(
        cells["none"]["defend"].flops + both - clean)


def test_calibration_measures_this_machine_and_is_read_back(tiny_raw, tmp_path):
    scenario = parse_suite(tiny_raw).scenarios[0]
    shape = cost.Shape(4, 3, 12, 160, 40, (0.5,) * 3, (0.5,) * 3)
    device = device_rates.calibrate(scenario.models["net-a"], shape, threads=1, repeats=2)
    assert device.kind == "cpu" and device.float32 > 1e6 and device.seconds_per_step > 0
    path = tmp_path / "calibration.json"
    device_rates.write_calibration(path, "here", device)
    assert device_rates.load_devices(path)["here"] == device
    assert "h100" in device_rates.load_devices(path)  # the built-in table stays


def test_loss_thresholds_do_not_cut_the_count_short(tiny_raw):
    """Hidden Trigger Backdoor stops once its loss falls below ``stop_below``; on random weights
    that would be at once, so the plan switches the threshold off and counts every iteration."""
    tiny_raw["attacks"] = [{"name": "hidden_trigger_backdoor", "label": f"htbd{n}",
                            "params": {"iterations": n}} for n in (10, 40)]
    [plan] = cost.plan_suite(parse_suite(tiny_raw))
    ten, forty = (c.per_trial["craft"].flops for c in plan.cells)
    assert ten > 0 and 3.5 < forty / ten < 4.05
    assert cost.never_stopping(plan_params := parse_suite(tiny_raw).attacks[0].params) \
        .stop_below is None and plan_params.stop_below == 10.0


@pytest.mark.parametrize("name, params", [
    ("calibrated_trigger_inversion", {"inversion": {"steps": 3}, "repair": {"steps": 3}}),
    ("neural_cleanse", {"steps": 3}),
    ("fine_tuning", {"epochs": 2}),
])
def test_defense_scoring_is_counted_on_two_test_sizes_and_extrapolated(tiny_raw, name, params):
    """Scoring thousands of test images at every loop count made planning a defense config take
    longer than running part of it; the test set enters linearly, so 1 and 2 images a class tell
    the count at any size. Compared here with counting on the whole (small) test set."""
    from raypoison.core.registry import build_component
    from raypoison.defenses import DEFENSES, TrainingSet, TrustedSet

    tiny_raw["scenarios"][0]["trusted_per_class"] = 2
    scenario = parse_suite(tiny_raw).scenarios[0]
    shape = cost.Shape(4, 3, 12, 160, 40, (0.5,) * 3, (0.5,) * 3)  # 10 test images a class
    defense = build_component({"name": name, "params": params}, "defense", DEFENSES)
    planned = cost.defending(defense, scenario, shape, "net-a", n_train=48)

    model = cost._frozen(cost.fresh(scenario.models["net-a"], shape))
    data = cost.random_data(shape, 2, test_per_class=10)
    trusted = TrustedSet(data.train_x, data.train_y, test_images=data.test_x,
                         test_labels=data.test_y)

    def run(p):
        d = DEFENSES.get(name)(p)
        d.detect(model, trusted, 0)
        d.repair(model, trusted, 0)

    sample = cost.random_data(shape, 12)
    flag_data = cost.random_data(shape, 2)
    flag_trusted = TrustedSet(flag_data.train_x, flag_data.train_y,
                              test_images=flag_data.test_x, test_labels=flag_data.test_y)
    flag = cost.counted(lambda: DEFENSES.get(name)(defense.params).flag(
        TrainingSet(sample.train_x, sample.train_y), model, flag_trusted, 0))
    direct = cost.extrapolated(defense.params, run).flops + flag
    assert planned.flops > 0
    assert planned.flops == pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize("content, said", [
    ("{\"devices\": {\"x\"", "not a readable calibration file"),
    ("[1, 2]", "an object with a 'devices' mapping"),
    ('{"devices": []}', "an object with a 'devices' mapping"),
    ('{"devices": {"x": {"description": "d"}}}', "device 'x': float32 must be a number > 0"),
    ('{"devices": {"x": {"float32": 0}}}', "float32 must be a number > 0, got '0'"),
    ('{"devices": {"x": {"float32": -5}}}', "float32 must be a number > 0"),
    ('{"devices": {"x": {"float32": "fast"}}}', "float32 must be a number > 0, got 'fast'"),
    ('{"devices": {"x": {"float32": 1e12, "kind": "tpu"}}}', "kind must be 'gpu' or 'cpu'"),
])
def test_a_bad_calibration_file_is_refused_naming_it(tiny_raw, tmp_path, capsys, content, said):
    """Tracebacks, negative GPU-hours or a ZeroDivisionError before; and --calibrate measured for
    ten seconds before it found the file unreadable."""
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(tiny_raw))
    bad = tmp_path / "cal.json"
    bad.write_text(content)
    assert main(["plan", str(config), "--calibration", str(bad), "--device", "x"]) == 2
    assert said in capsys.readouterr().err
    tick = time.perf_counter()
    assert main(["plan", str(config), "--calibration", str(bad), "--calibrate", "here"]) == 2
    assert time.perf_counter() - tick < 5 and "cal.json" in capsys.readouterr().err


def test_plan_refuses_a_missing_calibration_file_and_no_gpus(tiny_raw, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(tiny_raw))
    assert main(["plan", str(config), "--calibration", str(tmp_path / "absent.json")]) == 2
    assert "calibration file not found" in capsys.readouterr().err
    for gpus in ("0", "-2"):
        assert main(["plan", str(config), "--gpus", gpus]) == 2
        assert "--gpus: must be at least 1" in capsys.readouterr().err


def test_counting_without_the_arithmetic_counts_the_same_and_skips_it(caplog):
    """The planner counts matrix products and convolutions without computing them (noise of
    their shape instead): the count must equal the computed one, the outputs must not be the
    computed ones, and code that noise breaks is counted again with everything computed."""
    from raypoison.training.flops import counted as flops_of

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 10 * 10, 4))
    x, y = torch.rand(16, 3, 12, 12), torch.randint(0, 4, (16,))
    seen = {}

    def step(key: str) -> None:
        out = net(x)
        seen[key] = out.detach().clone()
        torch.nn.functional.cross_entropy(out, y).backward()

    computed, quick = flops_of(lambda: step("computed")), flops_of(lambda: step("quick"),
                                                                     compute=False)
    assert computed > 0 and quick == computed
    assert torch.isfinite(seen["quick"]).all()
    assert not torch.allclose(seen["quick"], seen["computed"])

    a = torch.randn(16, 16)

    def factor() -> None:  # noise is not positive definite: the Cholesky factor fails on it
        torch.linalg.cholesky(a @ a.T)

    with pytest.raises(torch.linalg.LinAlgError):
        flops_of(factor, compute=False)
    cost._FELL_BACK.discard("LinAlgError")
    assert cost.counted(factor) == flops_of(factor) > 0
    assert "counting again with every product computed" in caplog.text
    assert "LinAlgError" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["transfer", "scratch"])
def test_a_quick_plan_equals_a_computed_one_for_every_attack_and_defense(tiny_raw, mode):
    """Every registered attack and defense is counted the same with and without the arithmetic
    of what is counted: a new one whose ops depend on values would fail here."""
    from raypoison.attacks import ATTACKS
    from raypoison.defenses import DEFENSES

    scenario = tiny_raw["scenarios"][0]
    scenario.update(mode=mode, trusted_per_class=2,
                    models={"net-a": {"arch": "resnet18", "params": {"width": 8},
                                      "pretrain": scenario["models"]["net-a"]["pretrain"]}})
    counts = {"badnets": 3, "blend": 3, "wanet": 3}
    tiny_raw["attacks"] = [{"name": n, **({"params": {"poisons": counts[n]}} if n in counts
                                          else {})}
                           for n in ATTACKS.names() if n not in ("external", "noop")]
    tiny_raw["defenses"] = [{"name": n} for n in DEFENSES.names()]
    suite = parse_suite(tiny_raw)
    [quick], [computed] = cost.plan_suite(suite), cost.plan_suite(suite, compute=True)
    assert quick.shared == computed.shared and quick.defenses == computed.defenses
    assert [c.per_trial for c in quick.cells] == [c.per_trial for c in computed.cells]
    assert len(quick.defenses) == len(DEFENSES.names()) >= 12
    assert all(c.flops > 0 for c in quick.defenses.values())
    assert sum(c.per_trial["craft"].flops > 0 for c in quick.cells) >= 6


def test_fine_prunings_accuracy_floor_does_not_cut_the_count_short(tiny_raw):
    """Fine-pruning stops pruning where trusted accuracy first drops by ``max_drop``: on a model
    whose predictions vary that is early when computed and never when the products are noise,
    so the plan switches the floor off, as it does loss thresholds, and counts the whole sweep
    both ways."""
    from raypoison.defenses import TrustedSet
    from raypoison.defenses.tuning import FinePruning, TuneParams
    from raypoison.training.flops import counted as flops_of

    shape = cost.Shape(4, 3, 12, 160, 40, (0.5,) * 3, (0.5,) * 3)
    model = cost._frozen(cost.fresh(parse_suite(tiny_raw).scenarios[0].models["net-a"], shape))
    with torch.no_grad():  # a head that tells random images apart: pruning changes accuracy
        feats = model.features(torch.rand(40, 3, 12, 12))
        model.head.weight.copy_(torch.randn_like(model.head.weight) / (feats.std(0) + 1e-6))
        model.head.bias.copy_(-(model.head.weight @ feats.mean(0)))
    data = cost.random_data(shape, 10)
    trusted = TrustedSet(data.train_x, data.train_y)
    assert len(model(data.train_x.float() / 255).argmax(1).unique()) > 1

    def count(params: FinePruning.Params, compute: bool = True) -> float:
        return flops_of(lambda: FinePruning(params).repair(model, trusted, 0), compute=compute)

    floor = FinePruning.Params(max_drop=0.0, tune=TuneParams(epochs=1))
    sweep = count(dataclasses.replace(floor, max_drop=0.99))  # never drops that far
    assert count(floor) < sweep  # computed, the floor stops early
    planned = cost.never_stopping(floor)
    assert planned.max_drop == float("inf")
    assert count(planned) == count(planned, compute=False) == sweep
