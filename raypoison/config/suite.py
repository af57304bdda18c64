"""YAML benchmark file -> validated, frozen config objects.

Every check runs before anything is computed or written. An error names the path of the offending
key, e.g. ``scenarios[1].models.victim.arch: unknown model 'resnet81' (known: convnet)``.

The shape of a file (see ``configs/smoke.yaml`` for a complete one)::

    name: smoke
    scenarios:
      - name: synthetic-transfer
        dataset: {name: synthetic, params: {...}}
        mode: transfer
        models: {convnet-a: {arch: convnet, pretrain: {...}}, convnet-b: {...}}
        attacker: convnet-a           # the model the attacks craft on (or a list: see below)
        victims: [convnet-a, convnet-b]  # white-box iff it is (one of) the attacker(s)
        budget: 5
        epsilon: 8/255
        trials: 10
    attacks:
      - {name: none}
      - {name: feature_collision, params: {iterations: 60}}
    execution: {workers: 2}
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from raypoison.core.identity import NO_DEFENSE, identity_of
from raypoison.core.registry import Component, build_component
from raypoison.core.schema import (
    CONFIG_DIR,
    build,
    check_name,
    non_finite,
    optional_path,
    parse_fraction,
    parse_share,
    positive,
    quote,
)
from raypoison.errors import ConfigError
from raypoison.training.recipe import DEFAULT_RECIPES, RecipeConfig

# Bounds on what a config may ask for (README, "How a run behaves"); the name's is in core.schema
MAX_TRIALS = 10_000_000  # trials of one scenario
MAX_CONFIG_VALUES = 1_000_000  # values of a config once its YAML aliases are expanded
# a saved trial's poisons sit beside its victims' files (``<model>.pt``) as ``trial.pt``
SAVED_TRIAL_FILE = "trial"


def check_seed(path: str, seed: int) -> None:
    """A seed that seeds a torch generator as it is: what ``manual_seed`` takes, [0, 2**63)."""
    if not 0 <= seed < 2**63:
        shown = str(seed) if len(str(seed)) <= 40 else f"{str(seed)[:20]}… ({len(str(seed))} digits)"
        raise ConfigError(path, f"must lie in [0, 2**63), got {shown}")


@dataclass(frozen=True)
class PretrainConfig:
    """How to train a model from scratch when no checkpoint is given.

    ``dataset`` defaults to the scenario's own. Give another to pre-train on other data, as the
    benchmark's transfer scenarios do (CIFAR-100 for CIFAR-10 victims; Tiny-ImageNet's first 100
    classes for victims on its last 100).
    """

    recipe: RecipeConfig = field(
        default_factory=lambda: RecipeConfig(lr=0.05, epochs=10, milestones=(7,))
    )
    seed: int = 0
    dataset: Component | None = field(
        default=None, metadata={"parse": lambda v, p: _dataset_component(v, p)})

    def validate(self, path: str) -> None:
        check_seed(f"{path}.seed", self.seed)

    def dataset_for(self, scenario_dataset: Component) -> Component:
        """The data set this model pre-trains on, given its scenario's."""
        return self.dataset if self.dataset is not None else scenario_dataset


@dataclass(frozen=True)
class ModelConfig:
    """One model of a scenario: an architecture and either a checkpoint file or a pretraining."""

    arch: str
    params: Any = None  # the architecture's own parameters, e.g. {width: 24} for convnet
    checkpoint: str | None = field(default=None, metadata={"parse": optional_path})
    pretrain: PretrainConfig | None = None

    def validate(self, path: str) -> None:
        from raypoison.models import MODELS

        cls = MODELS.get(self.arch, f"{path}.arch")
        object.__setattr__(self, "params", build(cls.Params, self.params, f"{path}.params"))
        if self.checkpoint is not None and self.pretrain is not None:
            raise ConfigError(path, "give at most one of 'checkpoint' and 'pretrain'")

    @property
    def has_weights(self) -> bool:
        return self.checkpoint is not None or self.pretrain is not None


@dataclass(frozen=True)
class ScenarioConfig:
    name: str
    dataset: Component = field(metadata={"parse": lambda v, p: _dataset_component(v, p)})
    models: Mapping[str, ModelConfig]
    # one model, or several: the feature-space attacks craft on their ensemble, Witches' Brew on
    # one model of the pool per trial (or their ensemble; see its parameters)
    attacker: str | tuple[str, ...]
    victims: tuple[str, ...]
    budget: int
    epsilon: float = field(metadata={"parse": parse_fraction})
    trials: int
    mode: Literal["transfer", "finetune", "scratch"] = "transfer"
    setups: str | None = field(default=None, metadata={"parse": optional_path})
    train_per_class: int | None = None
    train_subset: Literal["first", "random"] = "first"  # which clean images per class
    patch_size: int = 5
    seed: int = 0
    recipe: RecipeConfig | None = None  # default: the protocol's recipe for the mode
    # defenses: the last ``trusted_per_class`` training images of each class, never trained on;
    # or ``trusted``, a share of the training set (0.01 or "1%", as "Pick your Poison" uses),
    # split evenly over the classes
    trusted_per_class: int | None = None
    trusted: float | None = field(default=None, metadata={"parse": parse_share})
    # where the trusted set comes from: ``held_out``, the images above, which no victim trains
    # on; or ``training``, as the "Pick your Poison" code draws it: as many images at random from
    # the trial's own clean training images, which the victim trained on (the images above are
    # still left out of training, so both forms train the same victims)
    trusted_from: Literal["held_out", "training"] = "held_out"
    # which triggered test images an attack success rate counts (:func:`asr_members`)
    asr_scope: Literal["target_class", "other_classes", "every_class"] = "target_class"

    # what only the defenses see: neither crafting, training nor the undefended evaluation reads
    # these (nor the name), so scenarios that differ in no other field train the same victims
    DEFENSE_ONLY: ClassVar[tuple[str, ...]] = ("trusted_from",)

    def __post_init__(self) -> None:
        if not isinstance(self.attacker, str) and len(self.attacker) == 1:
            object.__setattr__(self, "attacker", self.attacker[0])  # [a] is a, trial ids too

    def training_twin(self, name: str) -> ScenarioConfig:
        """This scenario named ``name``, with its defense-only fields at their defaults: its
        trial i trains, bit for bit, the victims of this scenario's trial i (saved victims are
        shared between the two; :class:`raypoison.trial.victims.VictimStore`)."""
        defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(self)
                                    if f.name in self.DEFENSE_ONLY}
        return dataclasses.replace(self, name=name, **defaults)

    def defense_context(self) -> dict[str, Any]:
        """The defense-only fields this scenario sets away from their defaults: with the
        defense's own label and parameters, what a defense's result on a shared victim is kept
        under."""
        return {f.name: identity_of(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name in self.DEFENSE_ONLY and getattr(self, f.name) != f.default}

    @property
    def attackers(self) -> tuple[str, ...]:
        """The models the attacks craft on, in the config's order."""
        return (self.attacker,) if isinstance(self.attacker, str) else self.attacker

    @property
    def training_recipe(self) -> RecipeConfig:
        return self.recipe or DEFAULT_RECIPES[self.mode]

    def validate(self, path: str) -> None:
        check_name(f"{path}.name", self.name)
        if not self.models:
            raise ConfigError(f"{path}.models", "at least one model is required")
        for name in self.models:
            check_name(f"{path}.models.{name}", name)
            if name == SAVED_TRIAL_FILE:
                raise ConfigError(f"{path}.models.{name}", f"{name!r} is reserved (a saved "
                                  "trial keeps its poisons under that name): rename the model")
        if not self.attackers:
            raise ConfigError(f"{path}.attacker", "at least one model is required")
        for i, name in enumerate(self.attackers):
            where = f"{path}.attacker" if isinstance(self.attacker, str) else f"{path}.attacker[{i}]"
            if name not in self.models:
                raise ConfigError(where, f"unknown model {name!r} (defined: {list(self.models)})")
        if len(set(self.attackers)) != len(self.attackers):
            raise ConfigError(f"{path}.attacker", "a model is listed twice")
        if not self.victims:
            raise ConfigError(f"{path}.victims", "at least one victim is required")
        for i, victim in enumerate(self.victims):
            if victim not in self.models:
                raise ConfigError(
                    f"{path}.victims[{i}]", f"unknown model {victim!r} (defined: {list(self.models)})"
                )
        if len(set(self.victims)) != len(self.victims):
            raise ConfigError(f"{path}.victims", "a victim is listed twice")
        if self.mode != "scratch":
            for name in self.victims:
                if not self.models[name].has_weights:
                    raise ConfigError(f"{path}.models.{name}", "needs a 'checkpoint' or a "
                                      f"'pretrain' ({self.mode} victims start from trained weights)")
        recipe = self.training_recipe
        if self.mode == "transfer" and recipe.augment and recipe.augmentation != "crop_flip":
            raise ConfigError(f"{path}.recipe.augmentation", "'shift' is for networks trained "
                              "whole (modes scratch and finetune); transfer heads train on "
                              "crop-and-flip views, which the feature bank holds")
        positive(path, "budget", self.budget)
        positive(path, "trials", self.trials)
        if self.trials > MAX_TRIALS:
            raise ConfigError(f"{path}.trials", f"{self.trials:,} trials; a scenario may have at "
                                                f"most {MAX_TRIALS:,}")
        positive(path, "patch_size", self.patch_size)
        if not 0 < self.epsilon <= 1:
            raise ConfigError(f"{path}.epsilon", f"must be in (0, 1], got {self.epsilon}")
        if self.trusted_per_class is not None:
            positive(path, "trusted_per_class", self.trusted_per_class)
        if self.trusted is not None:
            if self.trusted_per_class is not None:
                raise ConfigError(f"{path}.trusted", "give trusted or trusted_per_class, not both")
            if not 0 < self.trusted < 1:
                raise ConfigError(f"{path}.trusted", f"a share of the training set in (0, 1) "
                                  f"such as 0.01 or '1%', got {self.trusted:g}")
        if self.trusted_from != "held_out" and self.trusted is None \
                and self.trusted_per_class is None:
            raise ConfigError(f"{path}.trusted_from", "needs the trusted set's size: give "
                              "trusted (e.g. '1%') or trusted_per_class")
        if self.train_subset == "random" and self.train_per_class is None:
            raise ConfigError(f"{path}.train_subset", "'random' needs train_per_class")
        if self.train_per_class is not None:
            positive(path, "train_per_class", self.train_per_class)
            if self.train_per_class < self.budget:
                raise ConfigError(
                    f"{path}.train_per_class",
                    f"must be at least the budget ({self.budget}), got {self.train_per_class}",
                )
        if self.setups is not None:
            from raypoison.data.setups import load_setups

            try:
                setups = load_setups(self.setups)
            except Exception as err:
                raise ConfigError(f"{path}.setups", str(err)) from None
            if len(setups) < self.trials:
                raise ConfigError(f"{path}.trials", f"{self.trials} trials, but the setups file "
                                  f"holds {len(setups)}")
            sizes = {len(s.base_indices) for s in setups[: self.trials]}
            if sizes != {self.budget}:
                raise ConfigError(f"{path}.budget", f"is {self.budget}, the setups file has "
                                  f"{sorted(sizes)} bases per trial")
        from raypoison.data import DATASETS

        info = DATASETS.get(self.dataset.name).describe(self.dataset.params)
        if info is not None:
            if info.num_classes < 2:
                raise ConfigError(f"{path}.dataset", "needs at least 2 classes")
            if self.budget > info.min_train_per_class:
                raise ConfigError(
                    f"{path}.budget",
                    f"{self.budget} poisons exceed the {info.min_train_per_class} training images "
                    "of the smallest class",
                )
            # a lower bound of the training set's size where only its smallest class is known
            trusted = self.trusted_count(info.min_train_per_class * info.num_classes,
                                         info.num_classes)
            used = (self.train_per_class or 0) + trusted
            if trusted and used > info.min_train_per_class:
                raise ConfigError(
                    f"{path}.trusted" if self.trusted is not None else f"{path}.trusted_per_class",
                    f"{trusted} trusted images and {self.train_per_class or 0} "
                    f"training images per class exceed the {info.min_train_per_class} of the "
                    "smallest class")

    def trusted_count(self, train_size: int, num_classes: int) -> int:
        """Trusted images per class: ``trusted_per_class``, or the ``trusted`` share of a
        training set of ``train_size`` images split evenly (at least 1), or 0 without either."""
        if self.trusted_per_class is not None:
            return self.trusted_per_class
        if self.trusted is not None:
            return max(1, int(self.trusted * train_size) // num_classes)
        return 0

    def role(self, victim: str, crafted_on: tuple[str, ...] | None = None) -> str:
        """White-box iff the victim is a model the poisons were crafted on: by default the
        scenario's attackers; a trial of Witches' Brew's pool names its own model."""
        models = self.attackers if crafted_on is None else crafted_on
        return "white-box" if victim in models else "black-box"

    def identity(self) -> dict[str, Any]:
        """What defines a trial of this scenario: everything but the trial count (in the
        default-free form of :func:`identity_of`)."""
        plain = identity_of(self)  # files (setups, checkpoints, data) enter by their content
        plain.pop("trials")
        return plain


def _dataset_component(raw: Any, path: str) -> Component:
    from raypoison.data import DATASETS

    return build_component(raw, path, DATASETS)


@dataclass(frozen=True)
class ExecutionConfig:
    """How a run uses Ray. None of it changes a trial's result (``batch_heads`` up to float
    rounding), so none of it is in trial ids."""

    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.25
    pretrain_cpus: float | None = None  # CPUs of a pre-training task (default: cpus_per_worker)
    max_in_flight: int | None = None  # tasks submitted at once (default: 2 per worker)
    craft_batch: int = 1  # trials of one attack per task, their poisons crafted in one batch
    # a task's transfer heads (on a feature bank) train in one stacked computation: equal to one
    # by one up to float rounding, so off by default (rows stay bit-for-bit reproducible)
    batch_heads: bool = False
    # keep every trained victim and the trial's poisons under OUTPUT/victims/, so defenses added
    # later run on them without crafting or training (raypoison.trial.victims)
    save_victims: bool = False
    # decode each data set once for the run and share it through Ray's object store, one copy
    # per node (raypoison.execution.datasets); false: every worker decodes it itself
    share_data: bool = True
    max_attempts: int = 3
    max_restarts: int = 3
    rows_per_file: int = 2000
    flush_seconds: float = 10.0
    progress_seconds: float = 10.0

    def validate(self, path: str) -> None:
        positive(path, "workers", self.workers)
        positive(path, "cpus_per_worker", self.cpus_per_worker, allow_zero=True)
        positive(path, "gpus_per_worker", self.gpus_per_worker, allow_zero=True)
        if self.pretrain_cpus is not None:
            positive(path, "pretrain_cpus", self.pretrain_cpus)
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            raise ConfigError(
                f"{path}.gpus_per_worker", "above 1 it must be a whole number of GPUs"
            )
        if self.max_in_flight is not None:
            positive(path, "max_in_flight", self.max_in_flight)
        positive(path, "craft_batch", self.craft_batch)
        positive(path, "max_attempts", self.max_attempts)
        positive(path, "max_restarts", self.max_restarts, allow_zero=True)
        positive(path, "rows_per_file", self.rows_per_file)
        positive(path, "flush_seconds", self.flush_seconds)
        positive(path, "progress_seconds", self.progress_seconds)

    def in_flight_limit(self, workers: int) -> int:
        return self.max_in_flight or 2 * workers


@dataclass(frozen=True)
class SuiteConfig:
    """A whole benchmark file."""

    name: str
    scenarios: tuple[ScenarioConfig, ...]
    attacks: tuple[Component, ...] = field(metadata={"parse": lambda v, p: _attack_list(v, p)})
    defenses: tuple[Component, ...] = field(
        default=(), metadata={"parse": lambda v, p: _defense_list(v, p)})
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    description: str = ""

    def validate(self, path: str) -> None:
        check_name("name", self.name)
        if not self.scenarios:
            raise ConfigError("scenarios", "at least one scenario is required")
        seen: set[str] = set()
        for i, s in enumerate(self.scenarios):
            if s.name in seen:
                raise ConfigError(f"scenarios[{i}].name", f"scenario {s.name!r} is defined twice")
            seen.add(s.name)
        from raypoison.attacks import ATTACKS

        for j, attack in enumerate(self.attacks):
            for i, s in enumerate(self.scenarios):
                cls = ATTACKS.get(attack.name)
                if (len(s.attackers) > 1 and not cls.crafts_on_several
                        and cls.needs_attacker_weights(attack.params)):
                    raise ConfigError(f"scenarios[{i}].attacker",
                                      f"lists {len(s.attackers)} models, but attack "
                                      f"{attack.label!r} crafts on one model")
                problem = cls.scenario_problem(attack.params, s)
                if problem is not None:
                    raise ConfigError(f"attacks[{j}].params",
                                      f"{problem} (scenario {s.name!r})")
                for name in s.attackers if cls.needs_attacker_weights(attack.params) else ():
                    if not s.models[name].has_weights:
                        raise ConfigError(f"scenarios[{i}].models.{name}",
                                          "needs a 'checkpoint' or a 'pretrain' (attack "
                                          f"{attack.label!r} crafts on the attacker)")
                for name in ATTACKS.get(attack.name).required_models(attack.params, s):
                    if name not in s.models or not s.models[name].has_weights:
                        raise ConfigError(
                            f"attacks[{j}].params.model",
                            f"scenario {s.name!r} has no trained model {name!r}")

        if self.defenses:
            for i, s in enumerate(self.scenarios):
                if s.trusted_per_class is None and s.trusted is None:
                    raise ConfigError(f"scenarios[{i}].trusted_per_class",
                                      "defenses need a trusted set: give trusted_per_class, or "
                                      "trusted as a share of the training set (e.g. '1%')")
        from raypoison.defenses import DEFENSES

        for j, defense in enumerate(self.defenses):
            for s in self.scenarios:
                problem = DEFENSES.get(defense.name).scenario_problem(defense.params, s)
                if problem is not None:
                    raise ConfigError(f"defenses[{j}]", f"{problem} (scenario {s.name!r})")

    def scenario(self, name: str) -> ScenarioConfig:
        for s in self.scenarios:
            if s.name == name:
                return s
        raise KeyError(name)


def _component_list(raw: Any, path: str, registry: Any, what: str,
                    allow_empty: bool = False) -> tuple[Component, ...]:
    """A list of registry entries; an entry with ``sweep: {param: [values]}`` becomes one entry
    per value (per combination, for several parameters), labelled ``label-param<value>``."""
    if raw is None and allow_empty:
        return ()
    if not isinstance(raw, list) or (not raw and not allow_empty):
        raise ConfigError(path, f"expected a non-empty list of {what}")
    out, wheres = [], []
    for i, entry in enumerate(raw):
        for where, one in _sweep(entry, f"{path}[{i}]"):
            out.append(build_component(one, where, registry))
            wheres.append(where)
    labels = [c.label for c in out]
    for i, label in enumerate(labels):
        first = labels.index(label)
        if first != i:  # named where the file has it: a sweep's entry by its place in the sweep
            raise ConfigError(f"{wheres[i]}.label", f"label {label!r} is used twice (also by "
                                                    f"{wheres[first]}); give each entry a label")
    return tuple(out)


def _sweep(entry: Any, path: str) -> list[tuple[str, Any]]:
    if not isinstance(entry, dict) or "sweep" not in entry:
        return [(path, entry)]
    sweep = entry["sweep"]
    if not isinstance(sweep, dict) or not sweep or not all(
            isinstance(v, list) and v for v in sweep.values()):
        raise ConfigError(f"{path}.sweep", "expected a mapping of parameter -> non-empty list")
    base = {k: v for k, v in entry.items() if k != "sweep"}
    params = base.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}.params", "expected a mapping")
    label = base.get("label", base.get("name", ""))
    names = sorted(sweep)
    out = []
    for j, values in enumerate(itertools.product(*(sweep[n] for n in names))):
        chosen = dict(zip(names, values, strict=True))
        suffix = "-".join(f"{n}{v}" for n, v in chosen.items())
        out.append((f"{path}.sweep[{j}]", {**base, "params": {**params, **chosen},
                                           "label": f"{label}-{suffix}"}))
    return out


def _attack_list(raw: Any, path: str) -> tuple[Component, ...]:
    from raypoison.attacks import ATTACKS

    return _component_list(raw, path, ATTACKS, "attacks")


def _defense_list(raw: Any, path: str) -> tuple[Component, ...]:
    from raypoison.defenses import DEFENSES

    defenses = _component_list(raw, path, DEFENSES, "defenses", allow_empty=True)
    for i, d in enumerate(defenses):
        if d.label == NO_DEFENSE:
            raise ConfigError(f"{path}[{i}].label", "'none' names the undefended model's rows")
    return defenses


def _build_in(cls: type, raw: Any, base_dir: Path | None) -> Any:
    """Build a top-level config, resolving relative paths against ``base_dir``."""
    if not isinstance(raw, dict):
        raise ConfigError("", "the config file must hold a mapping at its top level")
    token = CONFIG_DIR.set(base_dir or Path.cwd())
    try:
        return build(cls, raw, "")
    finally:
        CONFIG_DIR.reset(token)


def expanded_size(value: Any, limit: int = MAX_CONFIG_VALUES) -> int:
    """How many values ``value`` holds once YAML aliases are expanded (shared objects counted as
    often as they are referred to), computed over the distinct objects only, so an alias bomb
    is measured in microseconds; stops counting past ``limit``."""
    sizes: dict[int, int] = {}

    def size(v: Any) -> int:
        if not isinstance(v, dict | list):
            return 1
        key = id(v)
        if key not in sizes:
            sizes[key] = 0  # a cycle (``a: &a [1, *a]``) counts as small
            items = list(v.keys()) + list(v.values()) if isinstance(v, dict) else v
            total = 1
            for item in items:
                total += size(item)
                if total > limit:
                    break
            sizes[key] = total
        return sizes[key]

    return size(value)


def _read_yaml(path: Path) -> Any:
    if path.is_dir():
        raise ConfigError("", f"{path} is a folder; give a config file (e.g. configs/smoke.yaml)")
    if not path.is_file():
        raise ConfigError("", f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError("", f"{path} is not UTF-8 text (byte {err.start}: "
                              f"{err.object[err.start:err.start + 4]!r}); save it as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
        values, bad = expanded_size(raw), non_finite(raw)
    except RecursionError:
        raise ConfigError("", f"{path} nests lists or mappings deeper than can be read; a "
                              "benchmark config needs a few levels") from None
    except _DuplicateKey as err:
        raise ConfigError("", f"{path}, line {err.line}: key {quote(err.key)} is given twice in "
                              f"one mapping (first on line {err.first}); YAML would keep the "
                              "last silently, so say which one you mean") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(p for p in (err.context, err.problem) if p)
        raise ConfigError("", f"{path} is not valid YAML{where}: {what}") from None
    except yaml.YAMLError as err:
        raise ConfigError("", f"{path} is not valid YAML: {quote(str(err))}") from None
    except ValueError as err:  # an integer of more digits than Python converts
        raise ConfigError("", f"{path} holds a value that cannot be read: {quote(str(err))}"
                          ) from None
    if values > MAX_CONFIG_VALUES:
        raise ConfigError("", f"{path} expands to more than {MAX_CONFIG_VALUES:,} values once its "
                              "YAML aliases are expanded; a benchmark config needs far fewer")
    if bad is not None:
        raise ConfigError(f"{path}: {bad}", "must be a finite number, not NaN or infinity")
    return raw


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (``epsilon`` written twice
    would otherwise keep the last silently). Keys merged in with ``<<`` may be overridden: that
    is what a merge is for.

    Each mapping is checked once, as written, before its merges are flattened into it: PyYAML
    flattens an anchored mapping in place when another mapping merges it, so a later look would
    see the merged keys as its own."""

    _MERGE, _VALUE = "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"

    def __init__(self, stream):
        super().__init__(stream)
        self._checked: set[int] = set()

    def flatten_mapping(self, node):
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag in (
                        self._MERGE, self._VALUE):
                    continue  # merges may override; other keys the safe loader judges itself
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
        super().flatten_mapping(node)


def parse_suite(raw: Any, base_dir: Path | None = None) -> SuiteConfig:
    return _build_in(SuiteConfig, raw, base_dir)


def load_suite(path: str | Path) -> SuiteConfig:
    """Read and validate a benchmark file; raises ConfigError naming the file and the bad key."""
    path = Path(path)
    raw = _read_yaml(path)
    with _in_file(path):
        return parse_suite(raw, path.parent.resolve())


@dataclass(frozen=True)
class ZooEntry:
    """One architecture trained on one data set, once per seed, by ``raypoison pretrain``."""

    name: str
    arch: str
    dataset: Component = field(metadata={"parse": lambda v, p: _dataset_component(v, p)})
    params: Any = None
    recipe: RecipeConfig = field(default_factory=lambda: DEFAULT_RECIPES["scratch"])
    seeds: tuple[int, ...] = (0,)

    def validate(self, path: str) -> None:
        from raypoison.models import MODELS

        check_name(f"{path}.name", self.name)
        cls = MODELS.get(self.arch, f"{path}.arch")
        object.__setattr__(self, "params", build(cls.Params, self.params, f"{path}.params"))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{path}.seeds", "give one or more distinct seeds")
        for i, seed in enumerate(self.seeds):
            check_seed(f"{path}.seeds[{i}]", seed)

    def model_config(self, seed: int) -> ModelConfig:
        return ModelConfig(self.arch, self.params, None, PretrainConfig(self.recipe, seed))

    def file_name(self, seed: int) -> str:
        return f"{self.name}-s{seed}.pt"


@dataclass(frozen=True)
class ZooConfig:
    """A victim zoo: every entry x seed becomes a checkpoint that scenarios name by file."""

    name: str
    models: tuple[ZooEntry, ...]
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0

    def validate(self, path: str) -> None:
        check_name("name", self.name)
        if not self.models:
            raise ConfigError(f"{path}.models" if path else "models",
                              "a zoo needs at least one model")
        names = [m.name for m in self.models]
        for i, n in enumerate(names):
            if names.index(n) != i:
                raise ConfigError(f"models[{i}].name", f"{n!r} is used twice")
        positive(path or "zoo", "cpus_per_task", self.cpus_per_task, allow_zero=True)
        positive(path or "zoo", "gpus_per_task", self.gpus_per_task, allow_zero=True)


def load_zoo(path: str | Path) -> ZooConfig:
    """Read and validate a zoo file for ``raypoison pretrain``."""
    path = Path(path)
    raw = _read_yaml(path)
    with _in_file(path):
        return _build_in(ZooConfig, raw, path.parent.resolve())


@contextlib.contextmanager
def _in_file(path: Path) -> Iterator[None]:
    """A ConfigError raised inside names the file before the key: ``configs/x.yaml:
    scenarios[0].trails: unknown key``."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{path}: {err.path}" if err.path else str(path), err.message) from None
