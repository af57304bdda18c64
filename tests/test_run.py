"""Whole runs on a real local Ray instance: results, resume, manifests, failure rows, bounds."""

import json
from collections import Counter

import pytest
import ray

from raypoison.config.specs import expand
from raypoison.config.suite import parse_suite
from raypoison.core.gpu_memory import CPU_BANK_BYTES
from raypoison.errors import DataError
from raypoison.execution.runner import RunOptions, run_suite
from raypoison.execution.worker import TrialTask, TrialWorker
from raypoison.models import load_checkpoint
from raypoison.store import results
from tests.conftest import noop_raw


@pytest.mark.slow
def test_run_writes_one_row_per_trial_and_victim_and_resumes(ray_cluster, tmp_path, tiny_raw):
    other = {"name": "synthetic", "params": {"classes": 6, "image_size": 12,
                                              "train_per_class": 20, "test_per_class": 5}}
    tiny_raw["scenarios"][0]["models"]["net-b"] = {  # pre-trained on other data, 6 classes
        "arch": "convnet",
        "pretrain": {"seed": 2, "recipe": {"epochs": 3, "milestones": []}, "dataset": other}}
    tiny_raw["scenarios"][0]["victims"] = ["net-a", "net-b"]
    suite = parse_suite(tiny_raw)
    out = str(tmp_path / "out")
    first = run_suite(suite, RunOptions(output=out))
    assert (first.status, first.planned, first.skipped, first.computed) == ("completed", 8, 0, 8)
    df = results.load(out)
    assert len(df) == 16 and not df.duplicated(["trial_id", "victim"]).any()
    assert set(df["status"]) == {"ok"}
    assert set(zip(df["victim"], df["role"], strict=True)) == {("net-a", "white-box"), ("net-b", "black-box")}
    assert df["success"].notna().all() and df["worker"].notna().all()
    assert set(df["trial_id"]) == {s.trial_id for s in expand(suite)}
    cached = sorted((tmp_path / "out" / "models").glob("*.pt"))
    assert len(cached) == 2  # pre-trained once, cached
    datasets = [load_checkpoint(p.read_bytes(), where=p.name)[1]["dataset"] for p in cached]
    assert sorted(d["params"]["classes"] for d in datasets) == [4, 6]
    assert set(df.loc[df["victim"] == "net-b", "target_pred"]) <= set(range(4))  # a 4-class head

    second = run_suite(suite, RunOptions(output=out))
    assert (second.planned, second.skipped, second.computed, second.rows_written) == (8, 8, 0, 0)
    assert len(results.load(out)) == 16
    manifest = json.loads((tmp_path / "out" / "manifests" / f"run-{second.run_id}.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["trials"]["skipped_already_done"] == 8
    assert manifest["config"]["name"] == "tiny" and manifest["versions"]["ray"] == ray.__version__

    grown = dict(tiny_raw, scenarios=[dict(tiny_raw["scenarios"][0], trials=5)])
    third = run_suite(parse_suite(grown), RunOptions(output=out, attacks=["none"]))
    assert (third.planned, third.skipped, third.computed) == (5, 4, 1)


@pytest.mark.slow
def test_an_error_in_a_worker_trial_becomes_failure_rows(ray_cluster, tiny_raw):
    suite = parse_suite(tiny_raw)
    spec = next(s for s in expand(suite) if s.attack.label == "feature_collision")
    worker = ray.remote(TrialWorker).options(num_cpus=0).remote()
    task = TrialTask((spec,), "run-x", {"net-a": ray.put(b"corrupt bytes")})
    (row,) = ray.get(worker.run.remote(task, 1))
    assert row["status"] == "failed" and "not a readable checkpoint" in row["error"]
    assert row["run_id"] == "run-x" and row["attempt"] == 1
    answer = ray.get(worker.ping.remote())
    assert answer["trials_run"] == 1  # the worker lives on
    assert answer["device"] == "cpu" and answer["bank_bytes"] == CPU_BANK_BYTES
    ray.kill(worker)


@pytest.mark.slow
def test_many_trivial_trials_stay_bounded(ray_cluster, tmp_path):
    raw = noop_raw(trials=400, seconds=0.0, victims=2)
    raw["execution"] = {"workers": 4, "cpus_per_worker": 0, "gpus_per_worker": 0.25,
                        "max_in_flight": 6, "rows_per_file": 500, "flush_seconds": 30}
    summary = run_suite(parse_suite(raw), RunOptions(output=str(tmp_path)))
    assert summary.computed == 400
    assert summary.scheduler["peak_in_flight"] <= 6
    assert summary.files_written <= 2
    df = results.load(str(tmp_path))
    assert len(df) == 800 and not df.duplicated(["trial_id", "victim"]).any()
    # Which workers get rows here depends on how fast each actor starts (three can finish 400
    # trials of 0 s before the fourth has imported torch); the spread over workers that are up
    # is asserted deterministically in test_trials_spread_over_every_worker_that_is_up.


@pytest.mark.slow
def test_trials_spread_over_every_worker_that_is_up(ray_cluster):
    """Least-loaded dispatch with a per-worker cap: once every worker answers, each gets about
    its share of the trials (each trial sleeps, so no worker is faster), and each runs once."""
    from raypoison.execution.scheduler import Scheduler
    from raypoison.execution.worker import start_worker

    specs = list(expand(parse_suite(noop_raw(trials=120, seconds=0.02))))
    rows: list[dict] = []
    scheduler = Scheduler(
        lambda: start_worker(num_cpus=0, num_gpus=0.25, max_restarts=0, cpu_threads=1),
        workers=4, max_in_flight=6, max_attempts=1, on_rows=rows.extend)
    # all four are up and have run a trial (imports, trial context) before the scheduler starts
    ray.get([h.run.remote(TrialTask((specs[0],), "warm-up", {}), 1) for h in scheduler.handles])
    stats = scheduler.run(TrialTask((spec,), "run-spread", {}) for spec in specs)
    for handle in scheduler.handles:
        ray.kill(handle)
    assert stats.trials_done == 120 and stats.peak_in_flight <= 6
    assert sorted(r["trial_id"] for r in rows) == sorted(s.trial_id for s in specs)
    per_worker = Counter(row["worker"] for row in rows)
    # a fair share is 30; dispatch to the first free worker instead leaves one with about 2
    assert len(per_worker) == 4 and min(per_worker.values()) >= 15, per_worker


def test_workers_hold_one_trial_each_until_every_worker_is_up(ray_cluster):
    """A trial queued behind another cannot move to a worker that comes up later: before every
    worker has answered, each holds one trial (two workers and two long trials ran one after the
    other on the first worker up); once all are up, each holds its share of ``max_in_flight``."""
    from raypoison.execution.scheduler import Scheduler
    from raypoison.execution.worker import start_worker

    specs = list(expand(parse_suite(noop_raw(trials=10, seconds=0.0))))
    scheduler = Scheduler(
        lambda: start_worker(num_cpus=0, num_gpus=0.25, max_restarts=0, cpu_threads=1),
        workers=2, max_in_flight=4, max_attempts=1, on_rows=lambda rows: None)
    tasks = iter([TrialTask((spec,), "run-depth", {}) for spec in specs])
    first, second = scheduler.workers
    first.healthy = True  # as if its ping came back first
    scheduler._dispatch(tasks, False)
    assert (first.load, second.load) == (1, 0)
    second.healthy = True
    scheduler._dispatch(tasks, False)
    assert (first.load, second.load) == (2, 2)
    ray.get(list(scheduler._in_flight))
    for handle in scheduler.handles:
        ray.kill(handle)


def _worker_that_fails_to_start():
    """A real worker actor whose constructor raises (as one does when CUDA cannot start)."""
    return ray.remote(TrialWorker).options(num_cpus=0, max_restarts=2).remote(cpu_threads="two")


def test_workers_that_fail_to_start_stop_the_run_with_their_error(ray_cluster):
    """A worker whose constructor raised was pinged forever: the run waited, saying its
    workers were not placed yet. It is replaced at once, and once the replacements are spent
    with no worker up, the run stops with the constructor's own error."""
    from raypoison.execution.scheduler import Scheduler

    specs = list(expand(parse_suite(noop_raw(trials=2, seconds=0.0))))
    scheduler = Scheduler(_worker_that_fails_to_start, workers=1, max_in_flight=2,
                          max_attempts=1, on_rows=lambda rows: None, max_replacements=2)
    with pytest.raises(RuntimeError, match=r"workers fail to start \(3 tries.*TypeError"):
        scheduler.run(TrialTask((spec,), "run-bad-start", {}) for spec in specs)
    assert scheduler.stats.start_failures == 3 and scheduler.stats.workers_replaced == 2
    assert scheduler.stats.trials_done == 0


def test_a_worker_that_fails_to_start_is_dropped_and_the_others_finish_the_run(ray_cluster):
    from raypoison.execution.scheduler import Scheduler
    from raypoison.execution.worker import start_worker

    starts = iter([start_worker, _worker_that_fails_to_start, _worker_that_fails_to_start])

    def start():
        maker = next(starts)
        return maker() if maker is _worker_that_fails_to_start else maker(
            num_cpus=0, num_gpus=0, max_restarts=0, cpu_threads=1)

    specs = list(expand(parse_suite(noop_raw(trials=6, seconds=1.0))))  # outlasts the starts
    rows: list[dict] = []
    scheduler = Scheduler(start, workers=2, max_in_flight=4, max_attempts=1,
                          on_rows=rows.extend, max_replacements=1)
    stats = scheduler.run(TrialTask((spec,), "run-one-bad", {}) for spec in specs)
    assert stats.start_failures == 2 and stats.workers_replaced == 1
    assert stats.trials_done == 6 and sorted(r["trial_id"] for r in rows) == sorted(
        s.trial_id for s in specs)
    assert [w.retired for w in scheduler.workers] == [False, True]
    assert scheduler.live_handles == [scheduler.workers[0].handle]
    # the worker left holds its share of max_in_flight again, not one trial as while others start
    assert stats.peak_in_flight == 2
    for handle in scheduler.handles:
        ray.kill(handle)


@pytest.mark.slow
def test_exported_poisons_evaluate_the_same_through_the_external_attack(ray_cluster, tmp_path,
                                                                         tiny_raw):
    suite = parse_suite(tiny_raw)
    out = tmp_path / "out"
    run_suite(suite, RunOptions(output=str(out), attacks=["feature_collision"], save_poisons=True))
    folders = out / "poisons" / "scenario=tiny-transfer" / "attack=feature_collision"
    assert sorted(p.name for p in folders.iterdir()) == ["0", "1", "2", "3"]
    assert {p.name for p in (folders / "0").iterdir()} == {"poisons.pickle", "base_indices.pickle",
                                                            "target.pickle"}
    again = dict(tiny_raw, attacks=[{"name": "external", "params": {"root": str(folders)}}])
    run_suite(parse_suite(again), RunOptions(output=str(tmp_path / "again")))
    crafted = results.load(str(out)).set_index("trial")
    imported = results.load(str(tmp_path / "again")).set_index("trial")
    assert (imported["status"] == "ok").all() and imported["poisons_valid"].all()
    # same setups, same training seeds, same poisons: the same outcomes
    for column in ("target_index", "poison_linf", "target_pred", "success", "clean_accuracy"):
        assert imported[column].tolist() == crafted[column].tolist(), column


@pytest.mark.slow
def test_batched_crafting_gives_the_same_outcomes(ray_cluster, tmp_path, tiny_raw):
    from raypoison.execution.runner import batches

    suite = parse_suite(tiny_raw)
    grouped = list(batches(expand(suite), 3))
    assert [(b[0].attack.label, len(b)) for b in grouped] == [
        ("none", 3), ("feature_collision", 3), ("none", 1), ("feature_collision", 1)]
    single = run_suite(suite, RunOptions(output=str(tmp_path / "one")))
    batched_raw = dict(tiny_raw, execution=dict(tiny_raw["execution"], craft_batch=3))
    batched = run_suite(parse_suite(batched_raw), RunOptions(output=str(tmp_path / "three")))
    assert single.computed == batched.computed == 8
    one = results.load(str(tmp_path / "one")).set_index(["attack", "trial"]).sort_index()
    three = results.load(str(tmp_path / "three")).set_index(["attack", "trial"]).sort_index()
    assert set(one["craft_batch"]) == {1} and set(three["craft_batch"]) == {1, 3}
    assert one["trial_id"].tolist() == three["trial_id"].tolist()  # execution is not identity
    for column in ("target_pred", "success", "poisons_valid"):
        assert one[column].tolist() == three[column].tolist(), column
    assert (one["clean_accuracy"] - three["clean_accuracy"]).abs().max() < 0.02


@pytest.mark.slow
def test_manifests_record_the_weights_and_a_changed_cached_model_is_reported(
        ray_cluster, tmp_path, tiny_raw, caplog):
    """A pre-trained model enters trial ids by its recipe, not its weights: a run on a machine
    that pre-trained it again must say so, and the report must too."""
    import hashlib

    import torch

    from raypoison.analysis.document import assemble
    from raypoison.analysis.run_status import manifests, weight_conflicts
    from raypoison.models.checkpoint import checkpoint_bytes

    tiny_raw["scenarios"][0]["trials"] = 2
    tiny_raw["attacks"] = [{"name": "none"}]
    suite = parse_suite(tiny_raw)
    out = tmp_path / "out"
    first = run_suite(suite, RunOptions(output=str(out), trials=range(0, 1)))
    (cached,) = (out / "models").glob("*.pt")
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    recorded = json.loads((out / "manifests" / f"run-{first.run_id}.json").read_text())["models"]
    assert recorded == [{"scenario": "tiny-transfer", "model": "net-a", "arch": "convnet",
                         "source": "pretrained", "file": cached.name, "sha256": digest}]

    second = run_suite(suite, RunOptions(output=str(out), trials=range(1, 2)))  # reuses the cache
    again = json.loads((out / "manifests" / f"run-{second.run_id}.json").read_text())["models"]
    assert again == [dict(recorded[0], source="cached")]
    assert weight_conflicts(manifests(str(out))) == {}

    # what another machine's pre-training could leave: the same recipe, other weights
    model, meta = load_checkpoint(cached.read_bytes(), where=cached.name)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    cached.write_bytes(checkpoint_bytes(model, meta))
    grown = parse_suite(dict(tiny_raw, scenarios=[dict(tiny_raw["scenarios"][0], trials=3)]))
    with caplog.at_level("WARNING", logger="raypoison"):
        third = run_suite(grown, RunOptions(output=str(out), trials=range(2, 3)))
    assert third.computed == 1
    conflicts = weight_conflicts(manifests(str(out)))
    assert list(conflicts) == [cached.name]
    assert sorted(map(sorted, conflicts[cached.name].values())) == [
        sorted([first.run_id, second.run_id]), [third.run_id]]
    assert any(cached.name in r.getMessage() and third.run_id in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
    sections = assemble(results.load(str(out)), str(out))
    warning = next(s for s in sections if s.title.startswith("Warning: pre-trained weights"))
    assert cached.name in warning.text and first.run_id in warning.text

    # a truncated cache stops the run before any trial, naming the file, and writes nothing
    rows_before = len(results.load(str(out)))
    cached.write_bytes(cached.read_bytes()[:500])
    fourth = parse_suite(dict(tiny_raw, scenarios=[dict(tiny_raw["scenarios"][0], trials=4)]))
    with pytest.raises(DataError, match=rf"{cached.name}: not a readable checkpoint.*cached "
                                        r"pre-trained model: restore it"):
        run_suite(fourth, RunOptions(output=str(out), trials=range(3, 4)))
    assert len(results.load(str(out))) == rows_before


@pytest.mark.slow
def test_a_run_whose_trials_fail_says_why_at_its_end(ray_cluster, tmp_path, tiny_raw, capsys):
    """Failed trials are data (exit 0), but the run's last lines say how many rows failed and
    the most common reasons, and the manifest keeps them."""
    from raypoison.cli import main
    from tests.conftest import write_config

    tiny_raw["scenarios"][0]["trials"] = 2
    tiny_raw["scenarios"][0]["recipe"]["lr"] = 1e30  # every victim's training diverges
    tiny_raw["attacks"] = [{"name": "none"}]
    config = write_config(tmp_path / "c.yaml", tiny_raw)
    assert main(["run", str(config), "--output", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "2 rows failed or were rejected; the most common reasons:" in err
    assert "  2 x train: " in err and "diverged" in err
    (manifest,) = (tmp_path / "out" / "manifests").glob("run-*.json")
    [entry] = json.loads(manifest.read_text())["failed_rows"]
    assert entry["rows"] == 2 and "diverged" in entry["error"]
