"""What a config will cost before it runs: FLOPs per phase, counted on real steps of its models.

Nothing here is a hand formula for a network's FLOPs. Every figure is a count by
the formulas of :mod:`torch.utils.flop_counter` on the ops of code this project runs:

- training: one real optimizer step of :func:`raypoison.training.loop.train` (``max_steps=1``) at
  the recipe's batch size, times the recipe's steps; in transfer mode with a feature bank, the
  bank (the frozen extractor on the pool under every view, once per worker) plus one real step of
  the linear head and the poisons' extractor passes;
- crafting and defenses: the attack's ``craft`` and the defense's ``detect``/``repair``/``flag``
  run on models of the scenario's architectures (random weights: FLOPs do not depend on them) and
  random images of the data set's shape, with every iteration count of their parameters
  (``iterations``, ``steps``, ``epochs``, ``teacher_steps``, nested ones too) set to 1, then
  each in turn to 2; the difference is that loop's cost per iteration, so the configured counts
  scale it exactly for loops whose cost does not change from one iteration to the next. The
  result is an upper bound where a loop may stop early (Feature Collision's step rule, a loss threshold).
- evaluation: the forward pass over the test set.

The time these FLOPs take on a device is :mod:`raypoison.execution.device_rates`; the printed plan
is :mod:`raypoison.execution.plan_text`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from raypoison.attacks import ATTACKS
from raypoison.attacks.context import StandaloneContext
from raypoison.config.specs import select
from raypoison.config.suite import ModelConfig, ScenarioConfig, SuiteConfig
from raypoison.core.identity import NO_DEFENSE
from raypoison.core.registry import Component
from raypoison.core.schema import to_plain
from raypoison.data import DATASETS, ImageData, load_dataset
from raypoison.data.setups import Setup
from raypoison.defenses import DEFENSES, Defense, TrainingSet, TrustedSet
from raypoison.execution.checkpoints import models_of, pretrained_name
from raypoison.models import ImageClassifier, build_model
from raypoison.training.flops import counted as flops_of
from raypoison.training.flops import release_noise
from raypoison.training.loop import train
from raypoison.training.recipe import RecipeConfig

log = logging.getLogger("raypoison")

PHASES = ("pretrain", "bank", "craft", "train", "defend", "eval")
LOOP_FIELDS = ("iterations", "steps", "epochs", "teacher_steps")
# parameters that end a loop early on a value the model computes, and the value that never does:
# the plan counts the configured iterations (on random weights a loss threshold would stop at
# once; fine-pruning's accuracy floor stops where a random model's accuracy first drops, and
# never where the matrix products are noise: counted, the two would differ)
STOP_FIELDS: dict[str, float | None] = {"stop_below": None, "max_drop": math.inf}
VIEWS = 162  # crop offsets (9 x 9) x flips: what a feature bank holds with augmentation
# crafting FLOPs grow with the poison count (every poison passes the model each iteration); a
# larger budget is counted on this many poisons and scaled, so planning 500 poisons stays fast
MAX_COUNTED_POISONS = 25


@dataclass
class Count:
    """FLOPs and the number of steps (optimizer steps, crafting iterations, forward batches)."""

    flops: float = 0.0
    steps: float = 0.0

    def __add__(self, other: Count) -> Count:
        return Count(self.flops + other.flops, self.steps + other.steps)

    def __mul__(self, k: float) -> Count:
        return Count(self.flops * k, self.steps * k)


@dataclass
class Cell:
    """One scenario and attack: its trials and what one trial costs, per phase."""

    scenario: str
    attack: str
    trials: int
    per_trial: dict[str, Count]
    precision: str = "float32"
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Shape:
    classes: int
    channels: int
    size: int
    train: int
    test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class ScenarioCost:
    name: str
    shape: Shape  # of its data set
    shared: dict[str, Count]  # once per run (pre-training) or per worker (feature bank)
    cells: list[Cell]
    precision: str = "float32"
    # each defense's part of a trial's "defend" phase (every victim), by label
    defenses: dict[str, Count] = field(default_factory=dict)


# -- counting -----------------------------------------------------------------------------------

_COMPUTE = contextvars.ContextVar("compute", default=False)
_FELL_BACK: set[str] = set()  # the errors already reported


def counted(fn: Callable[[], Any]) -> float:
    """The FLOPs of ``fn``, counted without computing the matrix products and convolutions
    (:func:`raypoison.training.flops.counted`, ``compute=False``): a CIFAR-sized plan of twelve
    defenses took 21 minutes with them computed, under 5 without. Where noise in place of their
    values breaks the code (a value that must be a probability, a matrix that must be positive
    definite), the count is taken again with everything computed; :func:`plan_suite`
    ``compute=True`` computes everything from the start."""
    if not _COMPUTE.get():
        try:
            return flops_of(fn, compute=False)
        except Exception as err:  # noqa: BLE001 - counted again below; a real error raises there
            if type(err).__name__ not in _FELL_BACK:
                _FELL_BACK.add(type(err).__name__)
                log.warning("counting again with every product computed (slower): with noise "
                            "in their place the code raised %s: %s", type(err).__name__, err)
    return flops_of(fn, compute=True)


# -- data and models of the right shape ------------------------------------------------------

def data_shape(data: ImageData) -> Shape:
    return Shape(data.num_classes, data.train_x.shape[1], data.train_x.shape[2],
                 len(data.train_y), len(data.test_y), tuple(data.mean), tuple(data.std))


def random_data(shape: Shape, train_per_class: int, test_per_class: int = 1) -> ImageData:
    """Random images of ``shape``, ``train_per_class`` of each class (FLOPs ignore the pixels)."""
    g = torch.Generator().manual_seed(0)

    def split(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = per_class * shape.classes
        x = torch.randint(0, 256, (n, shape.channels, shape.size, shape.size), generator=g,
                          dtype=torch.uint8)
        return x, torch.arange(shape.classes).repeat_interleave(per_class)

    (tx, ty), (vx, vy) = split(train_per_class), split(test_per_class)
    return ImageData(tx, ty, vx, vy, tuple(str(c) for c in range(shape.classes)), shape.mean,
                     shape.std)


def fresh(cfg: ModelConfig, shape: Shape, seed: int = 0) -> ImageClassifier:
    torch.manual_seed(seed)
    return build_model(cfg.arch, shape.classes, shape.mean, shape.std, shape.size, cfg.params)


def _frozen(model: ImageClassifier) -> ImageClassifier:
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    return model


def train_step(cfg: ModelConfig, shape: Shape, recipe: RecipeConfig, trainable: str) -> float:
    """FLOPs of one real optimizer step of the training loop at the recipe's batch size."""
    model = fresh(cfg, shape)
    data = random_data(shape, max(1, -(-recipe.batch_size // shape.classes)))
    x, y = data.train_x[:recipe.batch_size], data.train_y[:recipe.batch_size]
    return counted(lambda: train(model, x, y, recipe=recipe, seed=0,
                                 trainable=trainable,  # type: ignore[arg-type]
                                 max_steps=1))


def forward_per_image(cfg: ModelConfig, shape: Shape, head: bool = True) -> float:
    model = _frozen(fresh(cfg, shape))
    x = torch.rand(8, shape.channels, shape.size, shape.size)
    with torch.no_grad():
        flops = counted(lambda: model(x) if head else model.features(x))
    return flops / 8


def head_step(cfg: ModelConfig, shape: Shape, batch_size: int) -> float:
    """One real step of a linear head on banked features (forward, backward, SGD)."""
    model = fresh(cfg, shape)
    head = torch.nn.Linear(model.feature_dim, shape.classes)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
    feats = torch.randn(batch_size, model.feature_dim)
    labels = torch.randint(0, shape.classes, (batch_size,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(head(feats), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return counted(step)


# -- iteration counts of a plugin's parameters -------------------------------------------------

def loop_fields(params: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Paths of the integer loop counts in a (nested) Params dataclass."""
    if not dataclasses.is_dataclass(params):
        return
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if f.name in LOOP_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            yield (*prefix, f.name)
        elif dataclasses.is_dataclass(value):
            yield from loop_fields(value, (*prefix, f.name))


def _get(params: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        params = getattr(params, name)
    return params


def _set(params: Any, path: tuple[str, ...], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(params, **{path[0]: value})
    return dataclasses.replace(params, **{path[0]: _set(getattr(params, path[0]), path[1:],
                                                          value)})


def never_stopping(params: Any) -> Any:
    """``params`` with every early stop of :data:`STOP_FIELDS` (nested ones too) switched off
    (``dataclasses.replace`` does not run a plugin's ``validate``, which would refuse them)."""
    if not dataclasses.is_dataclass(params) or isinstance(params, type):
        return params
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if f.name in STOP_FIELDS:
            changes[f.name] = STOP_FIELDS[f.name]
        elif dataclasses.is_dataclass(value):
            changes[f.name] = never_stopping(value)
    return dataclasses.replace(params, **changes)


def looping_once(params: Any) -> Any:
    """``params`` with every loop count at 1 and early stops switched off."""
    params = never_stopping(params)
    for path in list(loop_fields(params)):
        params = _set(params, path, 1)
    return params


def extrapolated(params: Any, run: Callable[[Any], Any], once: float | None = None) -> Count:
    """The FLOPs of ``run(params)`` from runs with its loop counts at 1 and, one at a time, 2
    (early stops switched off: :func:`never_stopping`); ``once``, when the caller has it, is the
    count of the run with every loop at 1 (:func:`looping_once`)."""
    params = never_stopping(params)
    paths = list(loop_fields(params))
    base = looping_once(params)
    if once is None:
        once = counted(lambda: run(base))
    total = Count(once, 1)
    for path in paths:
        n = _get(params, path)
        if n <= 1:
            continue
        unit = counted(functools.partial(run, _set(base, path, 2))) - once
        total = total + Count(max(unit, 0.0) * (n - 1), n - 1)
    return total


# -- the phases --------------------------------------------------------------------------------

def train_size(scenario: ScenarioConfig, shape: Shape) -> int:
    """The images a victim of ``scenario`` trains on."""
    return scenario.train_per_class * shape.classes if scenario.train_per_class else shape.train


def steps_of(recipe: RecipeConfig, n: int) -> int:
    """Optimizer steps of ``recipe`` on ``n`` images."""
    return recipe.epochs * math.ceil(n / recipe.batch_size)


def banked(scenario: ScenarioConfig) -> bool:
    """Whether the victims' heads train on a feature bank (as TrialContext decides, short of its
    memory cap)."""
    return (scenario.mode == "transfer" and scenario.train_per_class is not None
            and scenario.train_subset == "first")


def training(scenario: ScenarioConfig, shape: Shape, victim: str) -> tuple[Count, Count]:
    """(per trial, shared per worker) training cost of one victim."""
    cfg, recipe = scenario.models[victim], scenario.training_recipe
    steps = steps_of(recipe, train_size(scenario, shape))
    if banked(scenario):
        views = VIEWS if recipe.augment else 1
        pool = (scenario.train_per_class + scenario.budget) * shape.classes  # type: ignore[operator]
        extractor = forward_per_image(cfg, shape, head=False)
        shared = Count(views * pool * extractor, math.ceil(views * pool / 512))
        poisons = Count(recipe.epochs * scenario.budget * extractor, 0)
        return Count(head_step(cfg, shape, recipe.batch_size) * steps, steps) + poisons, shared
    trainable = "head" if scenario.mode == "transfer" else "all"
    return Count(train_step(cfg, shape, recipe, trainable) * steps, steps), Count()


def pretraining(cfg: ModelConfig, shape: Shape) -> Count:
    assert cfg.pretrain is not None
    recipe = cfg.pretrain.recipe
    steps = steps_of(recipe, shape.train)
    return Count(train_step(cfg, shape, recipe, "all") * steps, steps)


def crafting(attack: Component, scenario: ScenarioConfig, shape: Shape
             ) -> tuple[Count, list[str], bool]:
    """One trial's crafting cost, notes on how it was counted, and whether the attack has a
    trigger (its victims are then also evaluated on the triggered test images)."""
    cls = ATTACKS.get(attack.name)
    if not cls.needs_models:
        return Count(), [], False
    notes = []
    params = attack.params
    extra = Count()
    if getattr(params, "fresh_model", False):  # a crafting model trained for the trial alone
        recipe = getattr(params, "recipe", None) or scenario.training_recipe
        name = getattr(params, "model", None) or scenario.attackers[0]
        steps = steps_of(recipe, train_size(scenario, shape))
        extra = Count(train_step(scenario.models[name], shape, recipe, "all") * steps, steps)
        params = dataclasses.replace(params, fresh_model=False)
        notes.append("crafting includes training its own model")
    budget = cls.poison_count(attack.params, scenario)
    counted_poisons = min(budget, MAX_COUNTED_POISONS)
    params = cls.with_poison_count(params, counted_poisons)
    data = random_data(shape, counted_poisons + 2)
    models = {name: _frozen(fresh(scenario.models[name], shape, i))
              for i, name in enumerate(dict.fromkeys((*scenario.attackers,
                                                      *cls.required_models(params, scenario))))}
    ctx = StandaloneContext(data, models, epsilon=scenario.epsilon,
                            patch_size=scenario.patch_size, attackers=scenario.attackers,
                            dataset_name=scenario.dataset.name, seed=scenario.seed,
                            training_recipe=scenario.training_recipe)
    per = counted_poisons + 2
    setup = Setup(target_class=0, target_index=0, base_class=1,
                  base_indices=tuple(range(per, per + counted_poisons)))
    results: list[Any] = []
    count = extrapolated(params, lambda p: results.append(cls(p).craft(ctx, setup, 0, 0)))
    scale = budget / counted_poisons
    if scale > 1 and count.flops:
        notes.append(f"crafting counted on {counted_poisons} poisons, scaled to {budget}")
    triggered = any(r.trigger is not None for r in results)
    return Count(count.flops * scale, count.steps) + extra, notes, triggered


def asr_images(scope: str, shape: Shape) -> int:
    """The test images an attack success rate counts under ``scope``
    (:func:`raypoison.trial.evaluate.asr_members`), classes taken as balanced."""
    per_class = shape.test // shape.classes
    return {"every_class": shape.test, "target_class": per_class}.get(scope,
                                                                       shape.test - per_class)


def passes(per_image: dict[str, float], images: int) -> Count:
    """Every victim's whole model over ``images`` test images, from its FLOPs per image (a
    repaired victim's evaluation; an undefended one's outside transfer mode)."""
    return sum((Count(f * images, math.ceil(images / 512)) for f in per_image.values()), Count())


def repairs(defense: Component) -> bool:
    """Whether the defense returns a repaired model (which the trial then evaluates)."""
    return DEFENSES.get(defense.name).repair is not Defense.repair


def defending(defense: Component, scenario: ScenarioConfig, shape: Shape, victim: str,
              n_train: int) -> Count:
    """One defense's cost on one victim: detection and repair on the trusted set, scoring on the
    test set, flagging the training set.

    The test set enters linearly and apart from the loops (each test image is scored a fixed
    number of times, after the inversion or tuning), so the loops are counted with one test image
    a class, and one more run with two, its loops at 1, gives the cost of each further image,
    instead of scoring thousands of images on the CPU at each loop count: on a CIFAR-sized config
    that took more than 15 minutes for Calibrated Trigger Inversion alone. The training set is
    flagged on samples of about 128 and 256 images and extrapolated the same way
    (:func:`flagging`).
    """
    cls = DEFENSES.get(defense.name)
    trusted_per_class = max(1, scenario.trusted_count(shape.train, shape.classes))
    model = _frozen(fresh(scenario.models[victim], shape))

    def trusted(test_per_class: int) -> TrustedSet:
        data = random_data(shape, trusted_per_class, test_per_class=test_per_class)
        return TrustedSet(data.train_x, data.train_y, test_images=data.test_x,
                          test_labels=data.test_y)

    def detect_and_repair(test_per_class: int) -> Callable[[Any], None]:
        trusted_set = trusted(test_per_class)

        def run(params: Any) -> None:
            d = cls(params)
            d.detect(model, trusted_set, 0)
            d.repair(model, trusted_set, 0)

        return run

    one_image, once = detect_and_repair(1), looping_once(defense.params)
    base = counted(lambda: one_image(once))
    loops = extrapolated(defense.params, one_image, once=base)
    per_image = max(counted(lambda: detect_and_repair(2)(once)) - base, 0.0)  # one more a class
    scored = loops + Count(per_image * (max(1, shape.test // shape.classes) - 1), 0)
    return scored + Count(flagging(cls(defense.params), model, trusted(1), shape, n_train), 1)


def flagging(defense: Defense, model: ImageClassifier, trusted: TrustedSet, shape: Shape,
             n_train: int) -> float:
    """FLOPs of ``defense.flag`` on a training set of ``n_train`` images, from two samples of it
    (about 128 and 256 images, at least one and two a class): the difference is the cost of
    each further image, and what the smaller sample costs beyond that is fixed per trial
    (STRIP's entropies of the trusted set). Scaling the whole count of one sample, as the
    planner did, multiplied that fixed part too: STRIP's plan was 2.7 times what a trial took.
    A cost that grows faster than the training set (deep k-NN's distances) would be
    underestimated, but ``cdist`` has no FLOP formula and is not counted at all."""
    def count(per_class: int) -> tuple[float, int]:
        sample = random_data(shape, per_class)
        training = TrainingSet(sample.train_x, sample.train_y)
        return counted(lambda: defense.flag(training, model, trusted, 0)), len(sample.train_y)

    small_per_class = max(1, min(n_train, 128) // shape.classes)
    small, n_small = count(small_per_class)
    if n_train == n_small:
        return small
    large, n_large = count(2 * small_per_class)
    per_image = max(large - small, 0.0) / (n_large - n_small)
    return max(small - per_image * n_small, 0.0) + per_image * n_train


def plan_suite(suite: SuiteConfig, *, attacks: list[str] | None = None,
               scenarios: list[str] | None = None, defenses: list[str] | None = None,
               load: Callable[[Component], ImageData] = load_dataset,
               compute: bool = False) -> list[ScenarioCost]:
    """Every scenario's costs: shared (pre-training, feature banks) and per trial, per attack.
    ``defenses`` keeps only those labels (as ``raypoison run --defenses``; ``none``: no
    defense), the others neither counted nor costed. ``compute`` does all the arithmetic of
    what is counted (:func:`counted`: slower, and the same counts wherever which ops run does
    not depend on their values)."""
    token = _COMPUTE.set(compute)
    try:
        return _plan_suite(suite, attacks, scenarios, defenses, load)
    finally:
        _COMPUTE.reset(token)
        release_noise()


def _plan_suite(suite: SuiteConfig, attacks: list[str] | None, scenarios: list[str] | None,
                defenses: list[str] | None, load: Callable[[Component], ImageData]
                ) -> list[ScenarioCost]:
    out = []
    shapes: dict[str, Shape] = {}
    pretrained: set[str] = set()

    def shape_of(component: Component) -> Shape:
        key = json.dumps(to_plain(component), default=str, sort_keys=True)
        if key not in shapes:
            info = DATASETS.get(component.name).describe(component.params)
            if info is not None and info.image_size and info.train_size and info.test_size:
                half = (0.5,) * info.channels  # a model's FLOPs do not depend on its normalization
                shapes[key] = Shape(info.num_classes, info.channels, info.image_size,
                                    info.train_size, info.test_size, half, half)
            else:  # only the files can tell: load them once
                shapes[key] = data_shape(load(component))
        return shapes[key]

    chosen_attacks = select(suite.attacks, attacks, "--attacks", lambda a: a.label)
    chosen_defenses = select(suite.defenses, None if defenses is None else
                             [d for d in defenses if d != NO_DEFENSE], "--defenses",
                             lambda d: d.label)
    for scenario in select(suite.scenarios, scenarios, "--scenarios", lambda s: s.name):
        shape = shape_of(scenario.dataset)
        log.info("plan %s: counting training and evaluation", scenario.name)
        shared: dict[str, Count] = {p: Count() for p in PHASES}
        for name in models_of(scenario):
            cfg = scenario.models[name]
            if cfg.pretrain is not None and cfg.checkpoint is None:
                key = pretrained_name(cfg, scenario)
                if key not in pretrained:  # scenarios that share a model pre-train it once
                    pretrained.add(key)
                    shared["pretrain"] += pretraining(cfg, shape_of(cfg.pretrain.dataset_for(
                        scenario.dataset)))
        per_victim = {}
        for victim in scenario.victims:
            per_trial, bank = training(scenario, shape, victim)
            shared["bank"] += bank
            per_victim[victim] = per_trial
        n_train = train_size(scenario, shape)
        full = {victim: forward_per_image(scenario.models[victim], shape)
                for victim in scenario.victims}
        scored = asr_images(scenario.asr_scope, shape)
        if scenario.mode == "transfer":  # test features once per worker (triggered ones once
            # per trigger and class), then the head per trial
            evaluation = Count()
            for victim in scenario.victims:
                cfg = scenario.models[victim]
                shared["eval"] += Count(forward_per_image(cfg, shape, head=False) * shape.test,
                                        math.ceil(shape.test / 512))
                head = fresh(cfg, shape).head
                feats = torch.randn(shape.test, head.in_features)
                evaluation += Count(counted(functools.partial(head, feats)), 1)
            triggered = Count(evaluation.flops * scored / max(1, shape.test), evaluation.steps)
        else:
            evaluation, triggered = passes(full, shape.test), passes(full, scored)
        repairing = [d for d in chosen_defenses if repairs(d)]
        by_defense: dict[str, Count] = {}
        for i, defense in enumerate(chosen_defenses, 1):
            log.info("plan %s: counting defense %s (%d of %d)", scenario.name, defense.label, i,
                     len(chosen_defenses))
            # a repaired victim is scored on the test set too
            by_defense[defense.label] = sum(
                (defending(defense, scenario, shape, victim, n_train)
                 for victim in scenario.victims),
                passes(full, shape.test) if defense in repairing else Count())
        defend = sum(by_defense.values(), Count())
        # under an attack with a trigger, each repaired victim scores the triggered images too
        rescored = passes(full, scored) * len(repairing)
        cells = []
        for i, attack in enumerate(chosen_attacks, 1):
            log.info("plan %s: counting attack %s (%d of %d)", scenario.name, attack.label, i,
                     len(chosen_attacks))
            craft, notes, has_trigger = crafting(attack, scenario, shape)
            per: dict[str, Count] = {"craft": craft, "train": Count(), "defend": Count(),
                                     "eval": Count()}
            if ATTACKS.get(attack.name).needs_models:
                per.update(train=sum(per_victim.values(), Count()),
                           defend=defend + rescored if has_trigger else defend,
                           eval=evaluation + triggered if has_trigger else evaluation)
            cells.append(Cell(scenario.name, attack.label, scenario.trials, per,
                              scenario.training_recipe.precision, notes))
        out.append(ScenarioCost(scenario.name, shape, shared, cells,
                                scenario.training_recipe.precision, by_defense))
    return out
