"""The whole life of one trial, in plain PyTorch: setup, craft, check, train victims, evaluate.

:func:`run_trial` has no Ray in it: it runs the same in a test, a notebook and a worker actor.
Every outcome is rows, one per victim; an error becomes rows with ``status="failed"`` that name the
phase and carry the message, so one broken trial never stops a run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raypoison.attacks import Poisons, create_attack
from raypoison.attacks.base import Attack, CraftResult
from raypoison.config.specs import TrialSpec
from raypoison.core.identity import derive_seed
from raypoison.data import ImageData
from raypoison.data.setups import Setup
from raypoison.data.triggers import Trigger
from raypoison.defenses import TrainingSet
from raypoison.models import ImageClassifier
from raypoison.store.rows import (
    STATUS_FAILED,
    STATUS_OK,
    STATUS_REJECTED,
    describe_error,
    now,
    trial_fields,
    trial_rows,
)
from raypoison.training.loop import TrainResult, check_finite, train, train_heads
from raypoison.trial.context import TrialContext
from raypoison.trial.defend import run_defenses
from raypoison.trial.evaluate import check_poisons, evaluate_victim, poisons_fit
from raypoison.trial.victims import VictimStore

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

    setup: Setup  # set first thing; a trial without one has failed (its rows are set)

    def __init__(self, spec: TrialSpec, ctx: TrialContext):
        self.spec = spec
        self.clock = time.perf_counter()
        self.common = trial_fields(spec)
        self.common.update(started_at=now(), device=str(ctx.device),
                           torch_version=torch.__version__)
        self.phase = "setup"
        self.rows: list[dict] | None = None
        self.crafted_on: tuple[str, ...] | None = None  # None: the scenario's attackers

    def finish(self, status: str, per: dict | None = None, error: str | None = None) -> None:
        self.rows = _finish(self.spec, self.common, self.clock, status, per, error,
                            self.crafted_on)

    def fail(self, err: Exception) -> None:
        self.finish(STATUS_FAILED, error=describe_error(err, self.phase))


def run_trials(specs: list[TrialSpec], ctx: TrialContext,
               save_poisons: PoisonSink | None = None, victims: VictimStore | None = None,
               save_victims: bool = False, batch_heads: bool = False) -> list[list[dict]]:
    """Run trials of one scenario and one attack, crafting their poisons in one batch.

    Returns each trial's rows, in order. Crafting time is shared evenly among the batch's trials;
    ``craft_batch`` in each row says how many were crafted together. With ``save_victims`` every
    trained victim is kept in ``victims``; a trial whose victims are saved there runs its
    defenses on them, with no crafting and no training: one that only lacks defenses
    (``write_undefended`` False), and one stopped after training and before its rows were
    written, whose undefended rows then come from the saved fields.
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
            # saved victims are this trial's own (the id follows its content): never train them
            # twice, whether the trial lacks defenses or was stopped before its rows were written
            # (an export of the poisons needs the crafting run, so it crafts again)
            if victims is not None and victims.has(trial.spec) and (
                    not trial.spec.write_undefended or save_poisons is None):
                trial.phase = "defend saved victims"
                _defend_saved(trial, ctx, victims)
        except Exception as err:  # a trial's error is data, not a crash of the run
            trial.fail(err)
    ready = [t for t in trials if t.rows is None]
    if not ready:
        return _rows_of(trials)
    scenario, attack_cfg = ready[0].spec.scenario, ready[0].spec.attack
    seeds = [derive_seed(scenario.seed, t.spec.index, attack_cfg.label, "craft") for t in ready]
    tick = time.perf_counter()
    try:
        attack = create_attack(attack_cfg)
    except Exception as err:
        for trial in ready:
            trial.fail(err)
        return _rows_of(trials)
    if type(attack).craft_many is Attack.craft_many:
        # crafting one by one anyway: an error (a bad external folder) fails its own trial only
        each: list[CraftResult | None] = []
        for trial, seed in zip(ready, seeds, strict=True):
            try:
                each.append(attack.craft(ctx, trial.setup, seed, trial.spec.index))
            except Exception as err:
                trial.fail(err)
                each.append(None)
        keep = [i for i, c in enumerate(each) if c is not None]
        ready, seeds = [ready[i] for i in keep], [seeds[i] for i in keep]
        crafted = [c for c in each if c is not None]
    else:
        try:
            crafted = attack.craft_many(
                ctx, [t.setup for t in ready], seeds, [t.spec.index for t in ready])
        except Exception as err:
            for trial in ready:
                trial.fail(err)
            return _rows_of(trials)
    if not ready:
        return _rows_of(trials)
    share = (time.perf_counter() - tick) / len(ready)
    # transfer heads on a feature bank can train together (execution.batch_heads)
    together = batch_heads and len(ready) > 1 and ctx.uses_feature_bank
    waiting: list[_Ready] = []
    for trial, seed, result in zip(ready, seeds, crafted, strict=True):
        trial.crafted_on = result.crafted_on
        trial.common.update(seed_craft=seed, seconds_craft=share, craft_batch=len(ready),
                            attack_iterations=result.iterations,
                            attack_loss_initial=result.loss_initial,
                            attack_loss_final=result.loss_final,
                            attack_loss_rose=result.loss_rose,
                            crafting_model=_crafting_model(scenario, attack, result))
        try:
            job = _after_crafting(trial, result, ctx, save_poisons, attack, store, together)
            if job is not None:
                waiting.append(job)
        except Exception as err:
            trial.fail(err)
    if waiting:
        _train_heads_together(waiting, ctx)
    return _rows_of(trials)


def _rows_of(trials: list[_Trial]) -> list[list[dict]]:
    """Each trial's rows: by now every trial has finished, or failed."""
    out = []
    for trial in trials:
        assert trial.rows is not None, trial.spec.trial_id
        out.append(trial.rows)
    return out


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
                    store: VictimStore | None = None, defer: bool = False) -> _Ready | None:
    """Check the poisons, save them, then train and evaluate the victims; with ``defer``, return
    the checked trial for training with others instead."""
    spec, setup, scenario = trial.spec, trial.setup, trial.spec.scenario
    if crafted.poisons is None:
        trial.finish(STATUS_OK)
        return None
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
        return None
    if save_poisons is not None:
        trial.phase = "save"
        save_poisons(spec, setup, crafted.poisons, ctx.data, crafted.trigger)
    trial.phase = "train"
    if crafted.trigger is not None:
        trial.common["trigger"] = crafted.trigger.description
    if store is not None:
        store.save_trial(spec, crafted.poisons, crafted.trigger, _saved_fields(trial.common),
                         crafted_on=trial.crafted_on)
    if defer:
        return _Ready(trial, pool, crafted.poisons, crafted.trigger, store)
    trial.finish(STATUS_OK, _train_and_evaluate(spec, ctx, setup, pool, crafted.poisons,
                                                crafted.trigger, store))
    return None


def _saved_fields(common: dict) -> dict:
    """The trial's row fields worth keeping with saved victims: plain values (a defense row of a
    later run repeats them), not this run's times and places."""
    skip = {"started_at", "finished_at", "run_id", "worker", "node", "device", "attempt",
            "torch_version", "ray_version", "raypoison_version", "status", "error"}
    return {k: v for k, v in common.items()
            if k not in skip and (v is None or isinstance(v, str | int | float | bool | list))}


def _restored(spec: TrialSpec, saved: dict) -> dict:
    """Saved trial fields as this trial's: without the fields that name the trial (its id,
    scenario, suite), which differ where a scenario defends victims another one saved."""
    own = trial_fields(spec)
    return {k: v for k, v in saved.items() if k not in own}


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


def _unaugmented(poisons: Poisons, clean: torch.Tensor) -> torch.Tensor | None:
    """The samples of :func:`_training_set` the victims train on as stored: the poisons, when
    they carry their own augmented view (``Poisons.augment`` False); None when none are."""
    if poisons.augment:
        return None
    mask = torch.zeros(len(clean) + len(poisons.images), dtype=torch.bool, device=clean.device)
    mask[len(clean):] = True
    return mask


def _defend(spec, ctx, setup, model, victim, poisons, trigger, clean, images, labels,
            store: VictimStore | None = None, victim_fields: dict | None = None) -> dict:
    """The suite's defenses of ``spec`` on one trained victim, by label. With a ``store``, each
    finished defense is saved at once, and one saved for this very victim is not run again."""
    scenario = spec.scenario
    is_poison = torch.zeros(len(labels), dtype=torch.bool)
    is_poison[len(clean):] = _changed(poisons, ctx.data)
    seeds = {d.label: _defense_seed(spec, victim, d.label) for d in spec.defenses}
    done: dict[str, Any] = {}
    keep = None
    if store is not None and victim_fields is not None:
        fields_of_victim = victim_fields
        for d in spec.defenses:
            saved = store.load_defense(spec, victim, d, seeds[d.label], fields_of_victim)
            if saved is not None:
                done[d.label] = saved

        def keep(defense, seed, fields) -> None:
            if fields.get("status") != STATUS_FAILED:  # a failure is tried again next run
                store.save_defense(spec, victim, defense, seed, fields_of_victim, fields)

    todo = tuple(d for d in spec.defenses if d.label not in done)
    done.update(run_defenses(todo, model, data=ctx.data, setup=setup, trigger=trigger,
                             trusted=ctx.trusted_set(clean.cpu().numpy(), spec.index),
                             training=TrainingSet(images, labels),
                             is_poison=is_poison, seeds=[seeds[d.label] for d in todo],
                             asr_scope=scenario.asr_scope, finished=keep))
    return {d.label: done[d.label] for d in spec.defenses}  # in the suite's order


def _defense_seed(spec: TrialSpec, victim: str, label: str) -> int:
    return derive_seed(spec.scenario.seed, spec.index, victim, label, "defend")


def train_seed(spec: TrialSpec, victim: str) -> int:
    """The seed victim ``victim`` of trial ``spec`` trains with (its row's ``seed_train``)."""
    return derive_seed(spec.scenario.seed, spec.index, victim, "train")


def saved_rows(spec: TrialSpec, store: VictimStore) -> list[dict]:
    """The rows that a trial stopped during its defenses already holds in ``store``: its
    undefended rows (when ``spec.write_undefended``) and a row per victim of each defense that
    finished on every victim, the rows the whole trial would have written for them. Nothing
    (``[]``) until the trial and every victim are saved. Reads files only: the driver calls it
    for the trials a stop cut short, so that their finished defenses reach the results, not
    just the saved-victims folder (which a move to another machine leaves behind); the next
    run then plans only the defenses still missing."""
    if not store.has(spec):
        return []
    _, _, saved, crafted_on = store.load_trial(spec, "cpu")
    per: dict[str, dict[str, Any]] = {}
    finished = list(spec.defenses)
    for victim in spec.scenario.victims:
        fields = store.victim_fields(spec, victim, train_seed(spec, victim))
        if fields is None:
            return []
        defended = {}
        for d in spec.defenses:
            kept = store.load_defense(spec, victim, d, _defense_seed(spec, victim, d.label),
                                      fields)
            if kept is not None:
                defended[d.label] = kept
        finished = [d for d in finished if d.label in defended]
        per[victim] = {**fields, "defenses": defended}
    if not finished and not spec.write_undefended:
        return []
    common = trial_fields(spec)
    common.update(_restored(spec, saved), status=STATUS_OK, error=None, finished_at=now())
    return trial_rows(dataclasses.replace(spec, defenses=tuple(finished)), common, per,
                      crafted_on)


def _defend_saved(trial: _Trial, ctx: TrialContext, store: VictimStore) -> None:
    """Run the spec's (missing) defenses on the trial's saved victims: no crafting, no training.
    The rows repeat the saved undefended fields, as every defense row does."""
    spec, setup, scenario = trial.spec, trial.setup, trial.spec.scenario
    poisons, trigger, common, crafted_on = store.load_trial(spec, ctx.device)
    trial.common.update(_restored(spec, common))
    trial.crafted_on = crafted_on
    clean, images, labels = _training_set(ctx, ctx.training_pool(setup, spec.index), poisons)
    per: dict[str, dict[str, Any]] = {}
    for victim in scenario.victims:
        seed_train = train_seed(spec, victim)
        model = ctx.fresh_victim(victim, seed_train)
        per[victim] = store.load_victim(spec, victim, model, seed_train)
        model.eval()
        per[victim]["defenses"] = _defend(spec, ctx, setup, model, victim, poisons, trigger,
                                          clean, images, labels, store, dict(per[victim]))
    trial.finish(STATUS_OK, per)


def _train_and_evaluate(spec, ctx, setup, pool, poisons, trigger=None,
                        store: VictimStore | None = None) -> dict[str, dict]:
    """Train each victim on the pool with the poisons in place of their sources, evaluate it
    (and save it, with a ``store``), and run the suite's defenses on it."""
    scenario = spec.scenario
    clean, images, labels = _training_set(ctx, pool, poisons)
    per: dict[str, dict[str, Any]] = {}
    banked = ctx.uses_feature_bank
    for victim in scenario.victims:
        seed_train = train_seed(spec, victim)
        model = ctx.fresh_victim(victim, seed_train)
        features = ctx.training_features(victim, clean, poisons.images) if banked else None
        fit = train(model, images, labels, recipe=scenario.training_recipe, seed=seed_train,
                    trainable="head" if scenario.mode == "transfer" else "all",
                    features=features, unaugmented=_unaugmented(poisons, clean))
        per[victim] = _evaluate(spec, ctx, setup, victim, model, fit, seed_train, poisons,
                                trigger, store, (clean, images, labels))
    return per


def _evaluate(spec: TrialSpec, ctx: TrialContext, setup: Setup, victim: str,
              model: ImageClassifier, fit: TrainResult, seed_train: int, poisons: Poisons,
              trigger: Trigger | None, store: VictimStore | None,
              training_set: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """A trained victim's row fields: its evaluation, saved (with a ``store``), then defended."""
    scenario = spec.scenario
    tick = time.perf_counter()
    outcome = evaluate_victim(
        model, ctx.data, setup, test_features=ctx.test_features(victim), trigger=trigger,
        triggered_features=(ctx.triggered_features(victim, setup, trigger)
                            if trigger is not None else None),
        asr_scope=scenario.asr_scope)
    fields: dict[str, Any] = {
        "seed_train": seed_train, "seconds_train": fit.seconds,
        "seconds_eval": time.perf_counter() - tick, "success": outcome.success,
        "target_pred": outcome.target_pred, "clean_accuracy": outcome.clean_accuracy,
        "attack_success_rate": outcome.attack_success_rate,
        "target_margin": outcome.target_margin,
        "poisons_fit": poisons_fit(model, poisons),
    }
    if store is not None:
        store.save_victim(spec, victim, model, head_only=scenario.mode == "transfer",
                          seed_train=seed_train, fields=fields)
    if spec.defenses:
        fields["defenses"] = _defend(spec, ctx, setup, model, victim, poisons, trigger,
                                     *training_set, store, dict(fields))
    return fields


@dataclass
class _Ready:
    """A trial whose poisons passed the checks, waiting for its victims to be trained."""

    trial: _Trial
    pool: np.ndarray
    poisons: Poisons
    trigger: Trigger | None
    store: VictimStore | None


def _train_heads_together(jobs: list[_Ready], ctx: TrialContext) -> None:
    """Train the heads of several transfer trials' victims in one stacked computation per victim
    (:func:`raypoison.training.loop.train_heads`), then evaluate each trial; the heads equal
    training them one by one up to float rounding."""
    sets = {}
    for job in list(jobs):
        try:
            sets[id(job)] = _training_set(ctx, job.pool, job.poisons)
        except Exception as err:
            job.trial.fail(err)
            jobs.remove(job)
    groups: dict[int, list[_Ready]] = {}
    for job in jobs:  # heads train together with others of the same training-set size
        groups.setdefault(len(sets[id(job)][2]), []).append(job)
    for group in groups.values():
        if len(group) > 1:
            _train_group(group, ctx, sets)
            continue
        trial, job = group[0].trial, group[0]
        try:
            trial.finish(STATUS_OK, _train_and_evaluate(trial.spec, ctx, trial.setup, job.pool,
                                                        job.poisons, job.trigger, job.store))
        except Exception as err:
            trial.fail(err)


def _train_group(jobs: list[_Ready], ctx: TrialContext,
                 sets: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """One victim at a time, every job's head in one :func:`train_heads`; then each trial."""
    scenario = jobs[0].trial.spec.scenario
    trained: dict[int, dict[str, tuple[ImageClassifier, TrainResult, int]]] = {
        id(job): {} for job in jobs}
    try:
        for victim in scenario.victims:
            seeds = [train_seed(job.trial.spec, victim) for job in jobs]
            models = [ctx.fresh_victim(victim, seed) for seed in seeds]
            features = []
            for job in jobs:
                bank = ctx.training_features(victim, sets[id(job)][0], job.poisons.images)
                if bank is None:
                    raise ValueError(f"victim {victim!r} has no feature bank to train heads on")
                features.append(bank)
            fits = train_heads(models, [sets[id(job)][2] for job in jobs],
                               recipe=scenario.training_recipe, seeds=seeds, features=features,
                               unaugmented=[_unaugmented(job.poisons, sets[id(job)][0])
                                            for job in jobs])
            for job, model, fit, seed in zip(jobs, models, fits, seeds, strict=True):
                trained[id(job)][victim] = (model, fit, seed)
    except Exception as err:  # the batch's training failed: each of its trials says so
        for job in jobs:
            job.trial.fail(err)
        return
    for job in jobs:
        trial = job.trial
        try:
            for _model, fit, _seed in trained[id(job)].values():
                check_finite(fit, scenario.training_recipe)
            per = {victim: _evaluate(trial.spec, ctx, trial.setup, victim, model, fit, seed,
                                     job.poisons, job.trigger, job.store, sets[id(job)])
                   for victim, (model, fit, seed) in trained[id(job)].items()}
            trial.finish(STATUS_OK, per)
        except Exception as err:
            trial.fail(err)


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
    return trial_rows(spec, common, per if status == STATUS_OK else None, crafted_on)
