"""The whole life of one trial, in plain PyTorch: setup, craft, check, train victims, evaluate.

:func:`run_trial` has no Ray in it: it runs the same in a test, a notebook and a worker actor.
Every outcome is rows, one per victim; an error becomes rows with ``status="failed"`` that name the
phase and carry the message, so one broken trial never stops a run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from raypoison.attacks import Poisons, create_attack
from raypoison.attacks.base import Attack
from raypoison.config import ScenarioConfig
from raypoison.data import ImageData, load_dataset
from raypoison.data.augment import identity_view
from raypoison.defend import run_defenses
from raypoison.defenses import TrainingSet, TrustedSet
from raypoison.evaluate import asr_members, check_poisons, evaluate_victim, poisons_fit
from raypoison.feature_bank import TrainingFeatures, view_features
from raypoison.models import ImageClassifier, build_model, load_checkpoint, to_device
from raypoison.rows import (
    STATUS_FAILED,
    STATUS_OK,
    STATUS_REJECTED,
    describe_error,
    now,
    per_victim,
    trial_fields,
)
from raypoison.setups import Setup, clean_training_indices, load_setups, sample_setup
from raypoison.spec import TrialSpec, derive_seed
from raypoison.training import train
from raypoison.triggers import paste
from raypoison.victims import VictimStore

VIEWS = 162  # crop offsets (9 x 9) x flips, for the protocol's 4-pixel padding
MAX_BANK_BYTES = 4 * 2**30  # a larger bank would not fit beside the models on a shared GPU


class TrialContext:
    """What the trials of one scenario share: the data set on the device and the pretrained models.

    A worker builds it once per scenario. Models are loaded on first use; callers get frozen shared
    copies (:meth:`model`) or fresh trainable ones (:meth:`fresh_victim`).
    """

    def __init__(self, scenario: ScenarioConfig, data: ImageData,
                 checkpoints: Mapping[str, bytes | str | Path], device: str = "cpu"):
        self.scenario = scenario
        self.device = device
        self.data = data.to(device)
        self.train_labels = data.train_y.cpu().numpy()
        self.test_labels = data.test_y.cpu().numpy()
        self._checkpoints = dict(checkpoints)
        self._models: dict[str, ImageClassifier] = {}
        self._setups = load_setups(scenario.setups) if scenario.setups else None
        self._banks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._test_features: dict[str, torch.Tensor] = {}
        self._triggered: dict[tuple, torch.Tensor] = {}
        self._held_out: np.ndarray | None = None

    @classmethod
    def create(cls, scenario: ScenarioConfig, checkpoints: Mapping[str, bytes | str | Path],
               device: str = "cpu") -> TrialContext:
        return cls(scenario, load_dataset(scenario.dataset), checkpoints, device)

    def model(self, name: str) -> ImageClassifier:
        """The pretrained model ``name``, frozen and in eval mode; do not train it."""
        if name not in self._models:
            if name not in self._checkpoints:
                raise KeyError(f"no checkpoint was given for model {name!r}")
            model, _meta = load_checkpoint(
                self._checkpoints[name], where=f"model {name!r}", arch=self.scenario.models[name].arch,
                mean=self.data.mean, std=self.data.std, image_size=self.data.image_shape[1],
                params=self.scenario.models[name].params)
            expected = self.scenario.models[name].arch
            if model.name != expected:
                raise ValueError(f"model {name!r}: checkpoint holds {model.name}, "
                                 f"the scenario says {expected}")
            model = to_device(model, self.device).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._models[name] = model
        return self._models[name]

    def fresh_victim(self, name: str, seed: int) -> ImageClassifier:
        """The victim ``name`` ready to train: in transfer and fine-tune modes a copy of the
        pretrained model with a new head for this data set's classes; from scratch, a new network
        initialized from ``seed``."""
        if self.scenario.mode == "scratch":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                cfg = self.scenario.models[name]
                return to_device(build_model(cfg.arch, self.data.num_classes, self.data.mean,
                                             self.data.std, self.data.image_shape[1],
                                             cfg.params), self.device)
        model = copy.deepcopy(self.model(name))
        if model.head.out_features != self.data.num_classes:
            model.head = torch.nn.Linear(model.feature_dim, self.data.num_classes).to(self.device)
        model.reset_head(seed)
        trainable = model.parameters() if self.scenario.mode == "finetune" else model.head.parameters()
        for p in trainable:
            p.requires_grad_(True)
        return model

    @property
    def uses_feature_bank(self) -> bool:
        """Transfer trials on a fixed-size training set train heads on banked features."""
        s = self.scenario
        if s.mode != "transfer" or s.train_per_class is None or s.train_subset != "first":
            return False  # a bank covers the fixed pool of first images only
        pool = (s.train_per_class + s.budget) * self.data.num_classes
        widest = max(self.model(v).feature_dim for v in s.victims)
        views = VIEWS if self.bank_views is None else len(self.bank_views)
        return views * pool * widest * 4 <= MAX_BANK_BYTES

    @property
    def bank_views(self) -> list[int] | None:
        """The views a victim's head trains on: None (all 162) with augmentation, else only the
        image as it is."""
        return None if self.scenario.training_recipe.augment else [identity_view()]

    def feature_pool(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Victim ``name``'s bank over the pool of clean images every trial draws from (the first
        ``train_per_class + budget`` of each class), and the pool row of each training index."""
        if name not in self._banks:
            s = self.scenario
            per_class = s.train_per_class + s.budget
            pool = np.sort(np.concatenate([np.flatnonzero(self.train_labels == c)[:per_class]
                                           for c in np.unique(self.train_labels)]))
            row_of = torch.full((len(self.train_labels),), -1, dtype=torch.long)
            row_of[torch.as_tensor(pool)] = torch.arange(len(pool))
            bank = view_features(self.model(name), self.data.train_x[torch.as_tensor(pool)],
                                 views=self.bank_views)
            self._banks[name] = (bank, row_of.to(self.device))
        return self._banks[name]

    def training_features(self, name: str, clean: torch.Tensor, poisons: torch.Tensor
                          ) -> TrainingFeatures | None:
        """Banked features of a victim's training set (``clean`` indices, then ``poisons``), or
        None when a clean image lies outside the bank's pool (a dirty-label trial keeps bases
        that may lie anywhere in their class): then the trial runs the extractor."""
        bank, row_of = self.feature_pool(name)
        rows = row_of[clean]
        if not bool((rows >= 0).all()):
            return None
        return TrainingFeatures(bank, rows, self.model(name), poisons.to(self.device),
                                pool_views=self.bank_views)

    def test_features(self, name: str) -> torch.Tensor | None:
        """Features of the test set under victim ``name``'s frozen extractor (transfer mode only)."""
        if self.scenario.mode != "transfer":
            return None
        if name not in self._test_features:
            model = self.model(name)
            with torch.no_grad():
                self._test_features[name] = torch.cat([
                    model.features(self.data.test_x[i:i + 1024].float().div_(255))
                    for i in range(0, len(self.data.test_x), 1024)])
        return self._test_features[name]

    def triggered_features(self, name: str, setup: Setup, trigger) -> torch.Tensor | None:
        """Features of the test images an attack success rate counts (:func:`asr_members`), with
        ``trigger`` applied, under victim ``name``'s frozen extractor (transfer mode only);
        cached per image set and trigger."""
        if self.scenario.mode != "transfer":
            return None
        scope = self.scenario.asr_scope
        which = setup.target_class if scope == "target_class" else setup.base_class
        key = (name, scope, which, trigger.description)
        if key not in self._triggered:
            images = paste(self.data.test_x[asr_members(self.data, setup, scope)], trigger)
            with torch.no_grad():
                self._triggered[key] = torch.cat([
                    self.model(name).features(images[i:i + 1024].float().div_(255))
                    for i in range(0, len(images), 1024)])
        return self._triggered[key]

    def held_out(self) -> np.ndarray:
        """The trusted set's training indices: the last ``trusted_per_class`` of each class (or
        the ``trusted`` share of the training set, split evenly), in data set order (empty
        without one). No victim ever trains on them."""
        if self._held_out is None:
            classes = np.unique(self.train_labels)
            n = self.scenario.trusted_count(len(self.train_labels), len(classes))
            parts = [np.flatnonzero(self.train_labels == c)[-n:] if n else np.empty(0, np.int64)
                     for c in classes]
            self._held_out = np.sort(np.concatenate(parts)).astype(np.int64)
        return self._held_out

    def trusted_set(self) -> TrustedSet:
        index = torch.as_tensor(self.held_out(), device=self.device)
        return TrustedSet(self.data.train_x[index], self.data.train_y[index],
                          test_images=self.data.test_x, test_labels=self.data.test_y)

    def training_pool(self, setup: Setup, index: int) -> np.ndarray:
        """The images trial ``index``'s victims train on without an attack, in data set order:
        the clean images of :func:`clean_training_indices` and the setup's bases. Poisons replace
        members of it (the bases, or a dirty-label attack's sources)."""
        s = self.scenario
        subset_seed = (derive_seed(s.seed, index, "subset")
                       if s.train_subset == "random" else None)
        clean = clean_training_indices(self.train_labels, setup, s.train_per_class,
                                       random_seed=subset_seed, held_out=self.held_out())
        return np.sort(np.concatenate([clean, np.asarray(setup.base_indices, dtype=np.int64)]))

    def setup(self, index: int) -> Setup:
        """Trial ``index``'s setup: from the scenario's setups file, or the seeded sampler."""
        if self._setups is None:
            return sample_setup(self.train_labels, self.test_labels, budget=self.scenario.budget,
                                seed=self.scenario.seed, index=index, exclude=self.held_out())
        setup = self._setups[index]
        exact = self.data.test_exact if self.data.test_exact is not None else len(self.test_labels)
        if not 0 <= setup.target_index < exact:
            raise ValueError(
                f"target index {setup.target_index} cannot be resolved: this copy of the data set "
                f"has the first {exact} test images in their original order")
        if self.test_labels[setup.target_index] != setup.target_class:
            raise ValueError(f"test image {setup.target_index} is not of the setup's target "
                             f"class {setup.target_class}: is the test set in its original order?")
        wrong = [i for i in setup.base_indices if self.train_labels[i] != setup.base_class]
        if wrong:
            raise ValueError(f"base indices {wrong[:5]} are not of the base class "
                             f"{setup.base_class}: is the training set in its original order?")
        trusted = np.intersect1d(setup.base_indices, self.held_out())
        if len(trusted):
            raise ValueError(f"base indices {trusted[:5].tolist()} are in the trusted set; "
                             "lower trusted_per_class (or trusted)")
        return setup


PoisonSink = Callable[..., None]  # (spec, setup, poisons, data, trigger)


def run_trial(spec: TrialSpec, ctx: TrialContext, save_poisons: PoisonSink | None = None
              ) -> list[dict]:
    """Run one trial and return its rows (one per victim).

    ``save_poisons``, if given, receives the poisons once they pass the checks (the execution
    layer uses it to export them in the reference trial-folder format).
    """
    return run_trials([spec], ctx, save_poisons)[0]


class _Trial:
    """The state of one trial while it runs: its shared row fields, clock and current phase."""

    def __init__(self, spec: TrialSpec, ctx: TrialContext):
        self.spec = spec
        self.clock = time.perf_counter()
        self.common = trial_fields(spec)
        self.common.update(started_at=now(), device=str(ctx.device),
                           torch_version=torch.__version__)
        self.phase = "setup"
        self.setup: Setup | None = None
        self.rows: list[dict] | None = None
        self.crafted_on: tuple[str, ...] | None = None  # None: the scenario's attackers

    def finish(self, status: str, per: dict | None = None, error: str | None = None) -> None:
        self.rows = _finish(self.spec, self.common, self.clock, status, per, error,
                            self.crafted_on)

    def fail(self, err: Exception) -> None:
        self.finish(STATUS_FAILED, error=describe_error(err, self.phase))


def run_trials(specs: list[TrialSpec], ctx: TrialContext,
               save_poisons: PoisonSink | None = None, victims: VictimStore | None = None,
               save_victims: bool = False) -> list[list[dict]]:
    """Run trials of one scenario and one attack, crafting their poisons in one batch.

    Returns each trial's rows, in order. Crafting time is shared evenly among the batch's trials;
    ``craft_batch`` in each row says how many were crafted together. With ``save_victims`` every
    trained victim is kept in ``victims``; a trial that only lacks defenses
    (``write_undefended`` False) whose victims are saved there runs those defenses on them, with
    no crafting and no training.
    """
    trials = [_Trial(spec, ctx) for spec in specs]
    store = victims if save_victims else None
    for trial in trials:
        try:
            trial.setup = setup = ctx.setup(trial.spec.index)
            trial.common.update(
                target_class=setup.target_class, target_index=setup.target_index,
                base_class=setup.base_class, base_indices=list(setup.base_indices),
                seconds_setup=time.perf_counter() - trial.clock)
            trial.phase = "craft"
            if not trial.spec.write_undefended and victims is not None \
                    and victims.has(trial.spec):
                trial.phase = "defend saved victims"
                _defend_saved(trial, ctx, victims)
        except Exception as err:  # a trial's error is data, not a crash of the run
            trial.fail(err)
    ready = [t for t in trials if t.rows is None]
    if not ready:
        return [t.rows for t in trials]
    scenario, attack_cfg = ready[0].spec.scenario, ready[0].spec.attack
    seeds = [derive_seed(scenario.seed, t.spec.index, attack_cfg.label, "craft") for t in ready]
    tick = time.perf_counter()
    try:
        attack = create_attack(attack_cfg)
    except Exception as err:
        for trial in ready:
            trial.fail(err)
        return [t.rows for t in trials]
    if type(attack).craft_batch is Attack.craft_batch:
        # crafting one by one anyway: an error (a bad external folder) fails its own trial only
        crafted = []
        for trial, seed in zip(ready, seeds, strict=True):
            try:
                crafted.append(attack.craft(ctx, trial.setup, seed, trial.spec.index))
            except Exception as err:
                trial.fail(err)
                crafted.append(None)
        keep = [i for i, c in enumerate(crafted) if c is not None]
        ready, seeds, crafted = ([ready[i] for i in keep], [seeds[i] for i in keep],
                                 [crafted[i] for i in keep])
    else:
        try:
            crafted = attack.craft_batch(
                ctx, [t.setup for t in ready], seeds, [t.spec.index for t in ready])
        except Exception as err:
            for trial in ready:
                trial.fail(err)
            return [t.rows for t in trials]
    if not ready:
        return [t.rows for t in trials]
    share = (time.perf_counter() - tick) / len(ready)
    for trial, seed, result in zip(ready, seeds, crafted, strict=True):
        trial.crafted_on = result.crafted_on
        trial.common.update(seed_craft=seed, seconds_craft=share, craft_batch=len(ready),
                            attack_iterations=result.iterations,
                            attack_loss_initial=result.loss_initial,
                            attack_loss_final=result.loss_final,
                            attack_loss_rose=result.loss_rose,
                            crafting_model=_crafting_model(scenario, attack, result))
        try:
            _after_crafting(trial, result, ctx, save_poisons, attack, store)
        except Exception as err:
            trial.fail(err)
    return [t.rows for t in trials]


def _crafting_model(scenario, attack, result) -> str | None:
    """The row's ``crafting_model``: what the attack said, else the models it crafted on, comma
    separated (None for attacks that craft on no model)."""
    if result.crafting_model is not None:
        return result.crafting_model
    if result.poisons is None:
        return None
    names = result.crafted_on or (scenario.attackers if attack.uses_attacker else ())
    return ",".join(names) or None


def _after_crafting(trial: _Trial, crafted, ctx: TrialContext, save_poisons, attack,
                    store: VictimStore | None = None) -> None:
    spec, setup, scenario = trial.spec, trial.setup, trial.spec.scenario
    if crafted.poisons is None:
        trial.finish(STATUS_OK)
        return
    trial.phase = "check"
    tick = time.perf_counter()
    pool = ctx.training_pool(setup, spec.index)
    check = check_poisons(crafted.poisons, setup, ctx.data, scenario.epsilon,
                          attack.poison_count(attack.params, scenario), relabels=attack.relabels,
                          pool=pool, rounding_slack=attack.rounding_slack)
    trial.common.update(poisons_valid=check.valid, poison_check=check.reason,
                        poison_linf=check.linf, poisons=len(crafted.poisons.images),
                        seconds_check=time.perf_counter() - tick)
    if not check.valid:
        trial.finish(STATUS_REJECTED, error=f"check: {check.reason}")
        return
    if save_poisons is not None:
        trial.phase = "save"
        save_poisons(spec, setup, crafted.poisons, ctx.data, crafted.trigger)
    trial.phase = "train"
    if crafted.trigger is not None:
        trial.common["trigger"] = crafted.trigger.description
    if store is not None:
        store.save_trial(spec, crafted.poisons, crafted.trigger, _saved_fields(trial.common))
    trial.finish(STATUS_OK, _train_and_evaluate(spec, ctx, setup, pool, crafted.poisons,
                                                crafted.trigger, store))


def _saved_fields(common: dict) -> dict:
    """The trial's row fields worth keeping with saved victims: plain values (a defense row of a
    later run repeats them), not this run's times and places."""
    skip = {"started_at", "finished_at", "run_id", "worker", "node", "device", "attempt",
            "torch_version", "ray_version", "raypoison_version", "status", "error"}
    return {k: v for k, v in common.items()
            if k not in skip and (v is None or isinstance(v, str | int | float | bool | list))}


def _training_set(ctx, pool, poisons):
    """The victims' training set: the pool's clean images, then the poisons."""
    data = ctx.data
    clean = torch.as_tensor(np.setdiff1d(pool, np.asarray(poisons.base_indices, dtype=np.int64)),
                            device=ctx.device)
    images = torch.cat([data.train_x[clean], poisons.images.to(ctx.device)])
    labels = torch.cat([data.train_y[clean],
                        torch.as_tensor(np.asarray(poisons.labels, dtype=np.int64),
                                        device=ctx.device)])
    return clean, images, labels


def _defend(spec, ctx, setup, model, victim, poisons, trigger, clean, images, labels) -> dict:
    """The suite's defenses of ``spec`` on one trained victim, by label."""
    scenario = spec.scenario
    is_poison = torch.zeros(len(labels), dtype=torch.bool)
    is_poison[len(clean):] = _changed(poisons, ctx.data)
    seeds = [derive_seed(scenario.seed, spec.index, victim, d.label, "defend")
             for d in spec.defenses]
    return run_defenses(spec.defenses, model, data=ctx.data, setup=setup, trigger=trigger,
                        trusted=ctx.trusted_set(), training=TrainingSet(images, labels),
                        is_poison=is_poison, seeds=seeds, asr_scope=scenario.asr_scope)


def _defend_saved(trial: _Trial, ctx: TrialContext, store: VictimStore) -> None:
    """Run the spec's (missing) defenses on the trial's saved victims: no crafting, no training.
    The rows repeat the saved undefended fields, as every defense row does."""
    spec, setup, scenario = trial.spec, trial.setup, trial.spec.scenario
    poisons, trigger, common = store.load_trial(spec, ctx.device)
    trial.common.update(common)
    clean, images, labels = _training_set(ctx, ctx.training_pool(setup, spec.index), poisons)
    per = {}
    for victim in scenario.victims:
        seed_train = derive_seed(scenario.seed, spec.index, victim, "train")
        model = ctx.fresh_victim(victim, seed_train)
        per[victim] = store.load_victim(spec, victim, model, seed_train)
        model.eval()
        per[victim]["defenses"] = _defend(spec, ctx, setup, model, victim, poisons, trigger,
                                          clean, images, labels)
    trial.finish(STATUS_OK, per)


def _train_and_evaluate(spec, ctx, setup, pool, poisons, trigger=None,
                        store: VictimStore | None = None) -> dict[str, dict]:
    """Train each victim on the pool with the poisons in place of their sources, evaluate it
    (and save it, with a ``store``), and run the suite's defenses on it."""
    scenario, data = spec.scenario, ctx.data
    clean, images, labels = _training_set(ctx, pool, poisons)
    per = {}
    banked = ctx.uses_feature_bank
    for victim in scenario.victims:
        seed_train = derive_seed(scenario.seed, spec.index, victim, "train")
        model = ctx.fresh_victim(victim, seed_train)
        features = ctx.training_features(victim, clean, poisons.images) if banked else None
        fit = train(model, images, labels, recipe=scenario.training_recipe, seed=seed_train,
                    trainable="head" if scenario.mode == "transfer" else "all",
                    features=features)
        tick = time.perf_counter()
        outcome = evaluate_victim(
            model, data, setup, test_features=ctx.test_features(victim), trigger=trigger,
            triggered_features=(ctx.triggered_features(victim, setup, trigger)
                                if trigger is not None else None),
            asr_scope=scenario.asr_scope)
        per[victim] = {
            "seed_train": seed_train, "seconds_train": fit.seconds,
            "seconds_eval": time.perf_counter() - tick, "success": outcome.success,
            "target_pred": outcome.target_pred, "clean_accuracy": outcome.clean_accuracy,
            "attack_success_rate": outcome.attack_success_rate,
            "target_margin": outcome.target_margin,
            "poisons_fit": poisons_fit(model, poisons),
        }
        if store is not None:
            store.save_victim(spec, victim, model, head_only=scenario.mode == "transfer",
                              seed_train=seed_train, fields=per[victim])
        if spec.defenses:
            per[victim]["defenses"] = _defend(spec, ctx, setup, model, victim, poisons, trigger,
                                              clean, images, labels)
    return per


def _changed(poisons: Poisons, data: ImageData) -> torch.Tensor:
    """Which poisons differ from their source image, in pixels or label: the samples a data-side
    detector should find (the control's unchanged bases are clean)."""
    index = torch.as_tensor(np.asarray(poisons.base_indices, dtype=np.int64),
                            device=data.train_x.device)
    sources = data.train_x[index]
    images = poisons.images.to(sources.device)
    pixels = ((images != sources).flatten(1).any(1) if len(index)
              else torch.zeros(0, dtype=torch.bool, device=sources.device))
    labels = torch.as_tensor(np.asarray(poisons.labels, dtype=np.int64), device=sources.device)
    return (pixels | (labels != data.train_y[index])).cpu()


def _finish(spec, common, clock, status, per=None, error=None, crafted_on=None) -> list[dict]:
    common.update(status=status, error=error, finished_at=now(),
                  seconds_total=time.perf_counter() - clock)
    return per_victim(spec, common, per if status == STATUS_OK else None, crafted_on)
