"""Defenses added after the fact: a finished run's saved victims take a new defense without any
crafting or training, and only the new defense's rows are written (real Ray, real files)."""

import copy
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from raypoison.attacks import create_attack
from raypoison.attacks.base import Poisons
from raypoison.cli import main
from raypoison.config.specs import expand
from raypoison.config.suite import parse_suite
from raypoison.core.identity import defense_key, digest
from raypoison.data.triggers import TriggerConfig, make_trigger
from raypoison.defenses import DEFENSES
from raypoison.errors import ConfigError, DataError
from raypoison.execution.runner import (
    WORK_ADD_RETRAIN,
    WORK_ADD_SAVED,
    WORK_NEW,
    WORK_RESUME,
    RunOptions,
    pending_work,
    plan_trial,
    run_suite,
)
from raypoison.store import results
from raypoison.trial.context import TrialContext
from raypoison.trial.run import run_trials, saved_rows
from raypoison.trial.victims import VictimStore, trigger_from_state, trigger_state
from tests.conftest import wait_for, write_config
from tests.test_defenses import PYP, TrustedProbe, fingerprint


def _suite(defenses, save=True, trials=2):
    raw = copy.deepcopy(PYP)
    raw["scenarios"][0]["trials"] = trials
    raw["attacks"] = [raw["attacks"][0], raw["attacks"][1]]  # the control and BadNets
    raw["defenses"] = defenses
    raw["execution"] = {"workers": 1, "save_victims": save, "flush_seconds": 0.5}
    return parse_suite(raw)


def _manifest(out, summary):
    return json.loads((out / "manifests" / f"run-{summary.run_id}.json").read_text())


@pytest.mark.slow
def test_a_defense_added_later_runs_on_the_saved_victims_only(ray_cluster, tmp_path,
                                                                    capsys, caplog):
    out = tmp_path / "out"
    planned, pending = pending_work(_suite(["spectral_signatures"]), RunOptions(output=str(out)))
    assert planned == 4 and [w for _, w in pending] == [WORK_NEW] * 4
    assert not out.exists()  # a dry run writes nothing
    first = run_suite(_suite(["spectral_signatures"]), RunOptions(output=str(out)))
    assert (first.status, first.computed) == ("completed", 4)
    files = sorted(out.rglob("*"))
    planned, pending = pending_work(_suite(["spectral_signatures", "strip"]),
                                    RunOptions(output=str(out)))
    assert planned == 4 and [w for _, w in pending] == [WORK_ADD_SAVED] * 4
    assert {tuple(d.label for d in spec.defenses) for spec, _ in pending} == {("strip",)}
    assert sorted(out.rglob("*")) == files
    raw = copy.deepcopy(PYP)  # the same suite as a config file, for the command line
    raw["scenarios"][0]["trials"] = 2
    raw["attacks"] = raw["attacks"][:2]
    raw["defenses"] = ["spectral_signatures", "strip"]
    raw["execution"] = {"workers": 1, "save_victims": True, "flush_seconds": 0.5}
    assert main(["run", str(write_config(tmp_path / "c.yaml", raw)), "--output", str(out),
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2] == ("time left: not estimated, no finished trial in this output measures "
                           "the phases below")  # strip never ran in it
    assert printed[-1] == f"  no measured strip in {pending[0][0].scenario.name}: 4 trials"
    assert sorted(out.rglob("*")) == files
    before = results.load(str(out))
    assert len(before) == 8 and set(before["defense"]) == {"none", "spectral_signatures"}
    saved = sorted(p.name for p in (out / "victims").rglob("*.pt"))
    assert saved.count("trial.pt") == 4 and saved.count("net.pt") == 4

    with caplog.at_level("INFO", logger="raypoison"):
        second = run_suite(_suite(["spectral_signatures", "strip"]), RunOptions(output=str(out)))
    assert any(r.getMessage().endswith(f"no measured strip in {pending[0][0].scenario.name}: "
                                       "4 trials") for r in caplog.records)  # the run says so too
    manifest = _manifest(out, second)
    assert manifest["trials"]["for_added_defenses"] == 4
    assert manifest["trials"]["to_craft_and_train"] == 0  # nothing crafted, nothing trained
    after = results.load(str(out))
    assert len(after) == 12 and second.rows_written == 4  # one row per (trial, victim)
    new = after[after["defense"] == "strip"]
    assert len(new) == 4 and set(new["status"]) == {"ok"}, new["error"].tolist()
    assert new["flag_auc"].notna().sum() == 2  # BadNets' trials have poisons to find
    old = after[after["defense"] != "strip"].set_index(["trial_id", "victim", "defense"])
    kept = before.set_index(["trial_id", "victim", "defense"])
    assert old["run_id"].eq(kept["run_id"]).all()  # the attack rows are untouched
    assert old["finished_at"].eq(kept["finished_at"]).all()
    undefended = kept.xs("none", level="defense")
    for row in new.itertuples():  # the new rows repeat the saved victim's undefended fields
        assert row.clean_accuracy == undefended.loc[(row.trial_id, row.victim), "clean_accuracy"]
        assert row.seed_train == undefended.loc[(row.trial_id, row.victim), "seed_train"]

    third = run_suite(_suite(["spectral_signatures", "strip"]), RunOptions(output=str(out)))
    assert (third.planned, third.skipped, third.computed) == (4, 4, 0)


@pytest.mark.slow
def test_without_saved_victims_a_new_defense_retrains_and_still_writes_only_its_rows(
        ray_cluster, tmp_path):
    out = tmp_path / "out"
    run_suite(_suite(["spectral_signatures"], save=False, trials=1), RunOptions(output=str(out)))
    assert not (out / "victims").exists()
    before = results.load(str(out))
    _, pending = pending_work(_suite(["spectral_signatures", "strip"], save=False, trials=1),
                              RunOptions(output=str(out)))
    assert [w for _, w in pending] == [WORK_ADD_RETRAIN] * 2
    second = run_suite(_suite(["spectral_signatures", "strip"], save=False, trials=1),
                       RunOptions(output=str(out)))
    manifest = _manifest(out, second)
    assert manifest["trials"]["for_added_defenses"] == 2
    assert manifest["trials"]["to_craft_and_train"] == 2  # it must retrain, and says so
    after = results.load(str(out))
    assert len(after) == len(before) + 2 and second.rows_written == 2
    assert set(after.loc[after["defense"] == "strip", "status"]) == {"ok"}
    strip = after[after["defense"] == "strip"].set_index("trial_id")
    none = before[before["defense"] == "none"].set_index("trial_id")
    assert (strip["clean_accuracy"] == none.loc[strip.index, "clean_accuracy"]).all()  # same victim


@pytest.mark.slow
def test_a_trial_stopped_after_its_victims_trained_resumes_at_its_defenses(ray_cluster, tmp_path):
    """A run stopped between training and rows (a session's end on a slow machine) loses no
    training: the next run takes the saved victims, and its rows are the ones a whole run
    writes."""
    out = tmp_path / "out"
    run_suite(_suite(["spectral_signatures"], trials=1), RunOptions(output=str(out)))
    whole = results.load(str(out)).set_index(["trial_id", "defense"]).sort_index()
    shutil.rmtree(out / "results")  # the rows are gone, the victims are not
    _, pending = pending_work(_suite(["spectral_signatures"], trials=1), RunOptions(output=str(out)))
    assert [w for _, w in pending] == [WORK_RESUME] * 2
    again = run_suite(_suite(["spectral_signatures"], trials=1), RunOptions(output=str(out)))
    manifest = _manifest(out, again)
    assert manifest["trials"]["resumed_from_saved_victims"] == 2
    assert manifest["trials"]["to_craft_and_train"] == 0
    resumed = results.load(str(out)).set_index(["trial_id", "defense"]).sort_index()
    assert resumed.index.equals(whole.index) and set(resumed["status"]) == {"ok"}
    for column in ("clean_accuracy", "attack_success_rate", "seed_train", "poisons",
                   "poisons_fit", "role", "flag_auc", "seconds_train"):
        assert resumed[column].equals(whole[column]), column
    assert (resumed["run_id"] == again.run_id).all()


@pytest.mark.slow
def test_a_run_stopped_between_defenses_loses_only_the_defense_it_was_running(
        ray_cluster, tmp_path):
    """Each finished defense is kept beside its saved victim at once: after a stop while the
    second defense ran, the next run takes the first one's fields as they were and runs only
    the second, and the rows are the ones a whole run writes."""
    out = tmp_path / "out"
    suite = _suite(["spectral_signatures", "strip"], trials=1)
    run_suite(suite, RunOptions(output=str(out)))
    whole = results.load(str(out)).set_index(["trial_id", "defense"]).sort_index()
    strip = next(d for d in suite.defenses if d.label == "strip")
    kept = sorted((out / "victims").rglob("net.defense-*.pt"))
    assert len(kept) == 4  # two trials, two defenses each
    shutil.rmtree(out / "results")  # stopped while STRIP ran: no rows yet, and no STRIP fields
    for path in (out / "victims").rglob(f"net.defense-{digest(defense_key(strip), 12)}.pt"):
        path.unlink()
    assert len(sorted((out / "victims").rglob("net.defense-*.pt"))) == 2
    again = run_suite(suite, RunOptions(output=str(out)))
    assert _manifest(out, again)["trials"]["resumed_from_saved_victims"] == 2
    resumed = results.load(str(out)).set_index(["trial_id", "defense"]).sort_index()
    assert resumed.index.equals(whole.index) and set(resumed["status"]) == {"ok"}
    for column in ("clean_accuracy", "flag_auc", "flag_recall", "flagged", "trusted_size"):
        assert resumed[column].equals(whole[column]), column
    seconds = resumed["seconds_defense"], whole["seconds_defense"]
    ss = seconds[0].xs("spectral_signatures", level="defense")
    assert ss.equals(seconds[1].xs("spectral_signatures", level="defense"))  # not run again
    assert not seconds[0].xs("strip", level="defense").equals(
        seconds[1].xs("strip", level="defense"))  # run again, in its own time
    assert len(sorted((out / "victims").rglob("net.defense-*.pt"))) == 4


def test_a_saved_defense_counts_only_for_the_victim_it_ran_on(tmp_path):
    suite = _suite(["spectral_signatures"])
    specs = list(expand(suite))
    spec, defense = specs[0], suite.defenses[0]
    store = VictimStore(str(tmp_path / "victims"))
    victim = {"seed_train": 5, "seconds_train": 12.5, "clean_accuracy": 0.75}
    assert store.load_defense(spec, "net", defense, 7, victim) is None  # nothing saved yet
    store.save_defense(spec, "net", defense, 7, victim, {"flag_auc": 0.9, "flagged": 3})
    assert store.load_defense(spec, "net", defense, 7, victim) == {"flag_auc": 0.9, "flagged": 3}
    retrained = {**victim, "seconds_train": 13.0}  # the same victim trained again
    assert store.load_defense(spec, "net", defense, 7, retrained) is None
    with pytest.raises(DataError, match="with seed 7, not spectral_signatures on net with 8"):
        store.load_defense(spec, "net", defense, 8, victim)
    other = next(s for s in specs if s.trial_id != spec.trial_id)
    name = f"net.defense-{digest(defense_key(defense), 12)}.pt"
    theirs = next((tmp_path / "victims").rglob(name))
    mine = theirs.parent.parent.parent / f"attack={other.attack.label}" / other.trial_id / name
    mine.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(theirs, mine)
    with pytest.raises(DataError, match="saved for another trial"):
        store.load_defense(other, "net", defense, 7, victim)


@pytest.mark.slow
def test_defenses_land_a_few_at_a_time_with_the_defenses_filter(ray_cluster, tmp_path):
    out = tmp_path / "out"
    suite = _suite(["spectral_signatures", "strip"], trials=1)
    first = run_suite(suite, RunOptions(output=str(out), defenses=["none"]))
    assert set(results.load(str(out))["defense"]) == {"none"} and first.rows_written == 2
    second = run_suite(suite, RunOptions(output=str(out), defenses=["strip"]))
    assert _manifest(out, second)["trials"]["to_craft_and_train"] == 0
    assert _manifest(out, second)["filters"]["defenses"] == ["strip"]
    third = run_suite(suite, RunOptions(output=str(out)))
    assert _manifest(out, third)["trials"]["for_added_defenses"] == 2
    rows = results.load(str(out))
    assert sorted(rows["defense"]) == ["none"] * 2 + ["spectral_signatures"] * 2 + ["strip"] * 2
    assert set(rows["status"]) == {"ok"}
    with pytest.raises(ConfigError, match="--defenses.*unknown name 'fine_tuning'"):
        run_suite(suite, RunOptions(output=str(out), defenses=["fine_tuning"]))


@pytest.mark.slow
def test_a_saved_victim_of_another_trial_is_refused(ray_cluster, tmp_path):
    out = tmp_path / "out"
    run_suite(_suite(["spectral_signatures"], trials=1), RunOptions(output=str(out)))
    files = sorted((out / "victims").rglob("net.pt"))
    assert len(files) == 2
    shutil.copyfile(files[0], files[1])  # the other attack's victim in its place
    run_suite(_suite(["spectral_signatures", "strip"], trials=1), RunOptions(output=str(out)))
    rows = results.load(str(out))
    strip = rows[rows["defense"] == "strip"]
    failed = strip[strip["status"] == "failed"]
    assert len(failed) == 1 and "saved for another trial" in failed["error"].iloc[0]
    assert set(strip["status"]) == {"ok", "failed"}


@pytest.mark.parametrize("style", ["patch", "translucent patch", "blend", "warp"])
def test_triggers_round_trip_through_the_saved_state(style):
    opacity = 0.3 if style == "translucent patch" else 1.0
    cfg = TriggerConfig(style=style.split()[-1], kind="checkerboard", opacity=opacity)  # type: ignore[arg-type]
    trigger = make_trigger(cfg, 3, 16)
    buffer = io.BytesIO()
    torch.save(trigger_state(trigger), buffer)
    back = trigger_from_state(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(back.apply(images), trigger.apply(images))
    assert back.description == trigger.description


@pytest.mark.parametrize("augment", [False, True])
def test_saved_poisons_keep_whether_the_victims_augment_them(tmp_path, augment):
    """A defense added later retrains nothing, but the saved poisons still say how they were
    trained on (dirty-label poisons carry their own view; ``Poisons.augment`` False)."""
    suite = _suite([])
    spec = next(s for s in expand(suite) if s.attack.name == "badnets")
    ctx = TrialContext.create(spec.scenario, {})
    attack = create_attack(spec.attack)
    if augment:
        attack = type(attack)(dataclasses.replace(attack.params, view="augmented"))
    crafted = attack.craft(ctx, ctx.setup(spec.index), 3, spec.index)
    assert crafted.poisons.augment is augment
    store = VictimStore(str(tmp_path / "victims"))
    store.save_trial(spec, crafted.poisons, crafted.trigger, {})
    poisons, _, _, _ = store.load_trial(spec, "cpu")
    assert poisons.augment is augment
    assert torch.equal(poisons.images, crafted.poisons.images)


def test_saved_rows_are_the_rows_of_the_work_a_stopped_trial_finished(tmp_path):
    """What the driver writes for a trial cut short: the saved undefended fields and each
    finished defense's, the same values the whole trial returned; a defense not finished has
    no row, and a trial whose victim is not saved has none at all."""
    suite = _suite(["spectral_signatures", "strip"], trials=1)
    spec = next(s for s in expand(suite) if s.attack.name == "badnets")
    store = VictimStore(str(tmp_path / "victims"))
    assert saved_rows(spec, store) == []  # nothing trained yet
    ctx = TrialContext.create(spec.scenario, {})
    whole = {r["defense"]: r for r in run_trials([spec], ctx, None, store, True)[0]}
    strip = next(d for d in suite.defenses if d.label == "strip")
    name = f"net.defense-{digest(defense_key(strip), 12)}.pt"
    next((tmp_path / "victims").rglob(name)).unlink()  # stopped while STRIP ran
    kept = {r["defense"]: r for r in saved_rows(spec, store)}
    assert sorted(kept) == ["none", "spectral_signatures"]
    for label, row in kept.items():
        assert row["status"] == "ok" and row["trial_id"] == spec.trial_id
        for column in ("clean_accuracy", "attack_success_rate", "seed_train", "poisons_fit",
                       "flag_auc", "flagged", "seconds_defense", "target_class", "role"):
            assert row[column] == whole[label][column], (label, column)
    later = dataclasses.replace(spec, defenses=(strip,), write_undefended=False)
    assert saved_rows(later, store) == []  # the only defense asked for is not finished
    next((tmp_path / "victims").rglob("net.pt")).unlink()
    assert saved_rows(spec, store) == []


@pytest.mark.slow
def test_a_stop_during_the_defenses_writes_the_finished_ones_rows(tmp_path):
    """SIGTERM while a slow defense runs: the run's results already hold the trial's undefended
    row and the finished defense's (so a move to another machine without the saved victims
    loses only the defense that was running), and the next run plans only that one."""
    raw = copy.deepcopy(PYP)
    raw["scenarios"][0]["trials"] = 1
    raw["attacks"] = [raw["attacks"][1]]  # BadNets
    raw["defenses"] = ["spectral_signatures",  # seconds; then one that never ends in time
                       {"name": "pivotal_tuning", "params": {"steps": 10**7}}]
    raw["execution"] = {"workers": 1, "save_victims": True, "flush_seconds": 0.5}
    config = write_config(tmp_path / "c.yaml", raw)
    out = tmp_path / "out"
    suite = parse_suite(raw)
    ss, pt = suite.defenses
    kept = f"net.defense-{digest(defense_key(ss), 12)}.pt"
    driver = subprocess.Popen(
        [sys.executable, "-m", "raypoison.cli", "run", str(config), "--output", str(out),
         "--num-cpus", "1"],
        env=dict(os.environ, RAY_AUTH_MODE="disabled"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: list(out.glob(f"victims/*/*/*/{kept}")) or driver.poll() is not None,
                 timeout=300)
        assert driver.poll() is None
        assert not list(out.glob("results/*/*/part-*.parquet"))  # the trial has not ended
        driver.send_signal(signal.SIGTERM)
        log, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, log[-2000:]
    rows = results.load(str(out))
    assert sorted(rows["defense"]) == ["none", "spectral_signatures"], log[-2000:]
    assert set(rows["status"]) == {"ok"} and rows["flag_auc"].notna().sum() == 1
    manifest = json.loads(next((out / "manifests").glob("run-*.json")).read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["output"]["rows_from_saved_work_after_the_stop"] == 2
    assert manifest["output"]["rows_written"] == 2
    spec = next(iter(expand(suite)))
    todo = plan_trial(spec, results.stored_trials(str(out))[spec.trial_id], True)
    assert todo is not None and todo.defenses == (pt,) and not todo.write_undefended


def _probe_suite(name: str, source: str, seed: int = 0):
    raw = copy.deepcopy(PYP)
    raw["scenarios"][0].update(name=name, trusted_from=source, trials=1, seed=seed)
    raw["scenarios"][0]["recipe"].update(epochs=1, milestones=[])
    raw["attacks"] = raw["attacks"][:1]  # the control
    raw["defenses"] = ["test_trusted_probe"]
    suite = parse_suite(raw)
    return next(expand(suite)), TrialContext.create(suite.scenarios[0], {})


@pytest.mark.parametrize("first", ["held_out", "training"])
def test_scenarios_that_differ_only_in_the_trusted_set_share_saved_victims(tmp_path, first):
    """A scenario that draws its trusted set from training trains the victims of its held-out
    twin (another name, the same everything else), so whichever runs second defends the
    victims the first saved: no training, the same undefended fields, its own trusted set, and
    its own saved defense results beside the first one's."""
    DEFENSES.register("test_trusted_probe")(TrustedProbe)
    try:
        specs = {"held_out": _probe_suite("tiny", "held_out"),
                 "training": _probe_suite("tiny-trusted-training", "training")}
        second = "training" if first == "held_out" else "held_out"
        store = VictimStore(str(tmp_path / "victims"))
        assert not store.has(specs[second][0])
        rows = {first: {r["defense"]: r for r in run_trials([specs[first][0]], specs[first][1],
                                                            None, store, True)[0]}}
        assert store.has(specs[second][0])
        assert len(list((tmp_path / "victims").glob("scenario=*"))) == 1  # saved once
        rows[second] = {r["defense"]: r for r in run_trials([specs[second][0]], specs[second][1],
                                                            None, store, True)[0]}
        other, _ = _probe_suite("tiny-other-seed", "training", seed=1)
        assert not store.has(other)  # another seed trains other victims
    finally:
        DEFENSES.unregister("test_trusted_probe")
    for source in ("held_out", "training"):
        assert rows[source]["none"]["trial_id"] == specs[source][0].trial_id
        assert {r["status"] for r in rows[source].values()} == {"ok"}
    a, b = rows["held_out"], rows["training"]
    for column in ("clean_accuracy", "seconds_train", "seed_train", "attack_success_rate"):
        assert a["none"][column] == b["none"][column], column  # one victim, trained once
    ctx = specs["training"][1]
    setup = ctx.setup(0)
    trained_on = np.setdiff1d(ctx.training_pool(setup, 0), np.asarray(setup.base_indices))
    for source, chosen in (("held_out", ctx.held_out()),
                           ("training", ctx.trusted_indices(trained_on, 0))):
        expected = fingerprint(ctx.data.train_x[torch.as_tensor(chosen)])
        assert rows[source]["test_trusted_probe"]["detection_score"] == pytest.approx(
            expected, rel=1e-12), source
    assert a["test_trusted_probe"]["detection_score"] != pytest.approx(
        b["test_trusted_probe"]["detection_score"], rel=1e-6)
    assert len(list((tmp_path / "victims").rglob("net.defense-*.pt"))) == 2


@pytest.mark.slow
def test_a_trusted_set_variant_in_the_same_output_defends_the_saved_victims(ray_cluster, tmp_path):
    """The run of a config whose scenario differs from a finished one only in ``trusted_from``
    (and its name) plans its trials as resumes on the saved victims, crafts and trains nothing,
    and writes its own rows beside the first run's, with the same undefended fields."""
    out = tmp_path / "out"
    held_out = _suite(["spectral_signatures", "strip"], trials=1)
    run_suite(held_out, RunOptions(output=str(out)))
    raw = copy.deepcopy(PYP)
    raw["scenarios"][0].update(trials=1, name="tiny-scratch-trusted-training",
                               trusted_from="training")
    raw["attacks"] = [raw["attacks"][0], raw["attacks"][1]]
    raw["defenses"] = ["spectral_signatures", "strip"]
    raw["execution"] = {"workers": 1, "save_victims": True, "flush_seconds": 0.5}
    training = parse_suite(raw)
    _, pending = pending_work(training, RunOptions(output=str(out)))
    assert [w for _, w in pending] == [WORK_RESUME] * 2
    summary = run_suite(training, RunOptions(output=str(out)))
    manifest = _manifest(out, summary)
    assert manifest["trials"]["resumed_from_saved_victims"] == 2
    assert manifest["trials"]["to_craft_and_train"] == 0
    rows = results.load(str(out))
    assert len(rows) == 12 and set(rows["status"]) == {"ok"}, rows["error"].tolist()
    assert len(list((out / "victims").glob("scenario=*"))) == 1  # the victims, saved once
    assert len(list((out / "victims").rglob("net.defense-*.pt"))) == 8  # 2 trials, 2 each
    by = rows.set_index(["scenario", "attack", "defense"]).sort_index()
    for attack in ("control", "badnets-poisons40"):
        first = by.loc[("tiny-scratch", attack, "none")]
        second = by.loc[("tiny-scratch-trusted-training", attack, "none")]
        assert first["trial_id"] != second["trial_id"]
        for column in ("clean_accuracy", "seconds_train", "seed_train", "attack_success_rate"):
            assert first[column] == second[column], (attack, column)
    again = run_suite(training, RunOptions(output=str(out)))
    assert (again.planned, again.skipped, again.computed) == (2, 2, 0)


def test_a_saved_head_is_refused_on_another_extractor(tmp_path, tiny_raw):
    """Transfer mode saves a victim's head alone: on an extractor pre-trained again (a new
    machine without models/) it would be a model nobody evaluated, so loading it says so."""
    from raypoison.models import build_model

    def convnet(seed: int):
        torch.manual_seed(seed)
        return build_model("convnet", num_classes=4, mean=(0.5,) * 3, std=(0.25,) * 3,
                           image_size=12)

    spec = next(iter(expand(parse_suite(tiny_raw))))
    store = VictimStore(str(tmp_path / "victims"))
    trained = convnet(1)
    store.save_victim(spec, "net-a", trained, head_only=True, seed_train=5,
                      fields={"clean_accuracy": 0.5})
    same = convnet(1)
    same.reset_head(9)
    assert store.load_victim(spec, "net-a", same, 5) == {"clean_accuracy": 0.5}
    assert torch.equal(same.head.weight, trained.head.weight)
    with pytest.raises(DataError, match="trained on another net-a extractor"):
        store.load_victim(spec, "net-a", convnet(2), 5)  # another pre-training


def test_a_retrained_victims_defenses_are_kept_beside_it_not_in_a_twins_folder(tmp_path):
    """A trial that trains again while its twin scenario's folder is complete saves its victim
    into its own folder; that victim's defense fields go beside it, so that the next run, which
    reads the trial's own (now complete) folder, finds them instead of running them again."""
    from raypoison.models import build_model

    DEFENSES.register("test_trusted_probe")(TrustedProbe)
    try:
        held, _ = _probe_suite("tiny", "held_out")
        training, _ = _probe_suite("tiny-trusted-training", "training")
    finally:
        DEFENSES.unregister("test_trusted_probe")
    defense = training.defenses[0]
    net = build_model("convnet", num_classes=4, mean=(0.5,) * 3, std=(0.25,) * 3, image_size=12)
    store = VictimStore(str(tmp_path / "victims"))
    first = {"seed_train": 5, "seconds_train": 10.0, "clean_accuracy": 0.70}
    again = {**first, "seconds_train": 11.0}
    empty = Poisons(torch.zeros(0, 3, 12, 12, dtype=torch.uint8), (), (), 0)
    store.save_trial(held, empty, None, {})
    store.save_victim(held, "net", net, head_only=False, seed_train=5, fields=first)
    assert store.has(training)  # the twin's folder is complete: it would be defended there
    store.save_victim(training, "net", net, head_only=False, seed_train=5, fields=again)
    store.save_defense(training, "net", defense, 7, again, {"detection_score": 0.25})
    store.save_defense(held, "net", defense, 7, first, {"detection_score": 0.5})
    store.save_trial(training, empty, None, {})  # its own folder complete: read from now on
    assert store.load_defense(training, "net", defense, 7, again) == {"detection_score": 0.25}
    assert store.load_defense(held, "net", defense, 7, first) == {"detection_score": 0.5}
    assert store.load_defense(training, "net", defense, 7, first) is None
    assert len(list((tmp_path / "victims").rglob("net.defense-*.pt"))) == 2
    twin_file = next((tmp_path / "victims" / "scenario=tiny").rglob("net.pt"))
    twin_file.write_bytes(b"damaged")  # the twin's victim, unreadable: not this trial's concern
    fresh = VictimStore(str(tmp_path / "victims"))
    assert fresh.load_defense(training, "net", defense, 7, again) == {"detection_score": 0.25}
