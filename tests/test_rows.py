"""Rows are built in one place and checked where they are made: a bad field fails its trial in the
worker, with a message, and the other trials' rows come through."""

from __future__ import annotations

import dataclasses

import pytest

from raypoison.attacks import ATTACKS
from raypoison.attacks.base import CraftResult, base_poisons
from raypoison.attacks.controls import NoAttack
from raypoison.config.specs import expand
from raypoison.config.suite import parse_suite
from raypoison.execution.worker import TrialTask, TrialWorker
from raypoison.store.rows import Fields, RowFieldError, check_rows, stamp, to_table


class BadRowField(NoAttack):
    """The control, but it names trial 1's crafting model with a number: a plugin's bug."""

    def craft(self, ctx, setup, seed, index):
        return CraftResult(base_poisons(ctx, setup), crafting_model=index if index == 1 else None)


@pytest.fixture
def bad_row_attack():
    ATTACKS.register("test_bad_row_field")(BadRowField)
    try:
        yield "test_bad_row_field"
    finally:
        ATTACKS.unregister("test_bad_row_field")


def test_fields_refuse_a_name_outside_the_schema_where_it_is_set():
    fields = Fields(status="ok")
    with pytest.raises(RowFieldError, match="'clean_acuracy'"):
        fields["clean_acuracy"] = 0.5
    with pytest.raises(RowFieldError, match="'victm'"):
        fields.update(victm="a")
    with pytest.raises(RowFieldError, match="'nodes'"):
        stamp([{"status": "ok"}], nodes="n1")
    assert dict(fields) == {"status": "ok"}


def test_check_rows_names_the_column_and_the_value():
    good = {"trial_id": "t", "clean_accuracy": 0.5, "trial": 3}
    assert check_rows([good]) is None
    to_table([good])  # what the sink writes
    problem = check_rows([good, {**good, "clean_accuracy": "high"}])
    assert problem is not None and "'clean_accuracy'" in problem and "'high'" in problem
    assert "'bogus'" in check_rows([{**good, "bogus": 1}])


def test_a_bad_field_fails_its_trial_in_the_worker_and_spares_the_others(
        ray_cluster, tiny_raw, tiny_checkpoint, bad_row_attack):
    import ray

    tiny_raw["attacks"] = [{"name": bad_row_attack}]
    suite = parse_suite(tiny_raw)
    specs = tuple(s for s in expand(suite) if s.index < 3)
    worker = TrialWorker()  # the actor's class, called in this process on the real Ray
    task = TrialTask(specs, "run-1", {"net-a": ray.put(tiny_checkpoint)})
    rows = worker.run(task, attempt=1)
    by_trial = {r["trial"]: r for r in rows}
    assert sorted(by_trial) == [0, 1, 2]
    assert by_trial[0]["status"] == by_trial[2]["status"] == "ok"
    bad = by_trial[1]
    assert bad["status"] == "failed"
    assert bad["error"].startswith("rows: ") and "'crafting_model'" in bad["error"]
    for row in rows:  # stamped and writable, bad trial included
        assert row["run_id"] == "run-1" and row["attempt"] == 1 and row["worker"]
    assert to_table(rows).num_rows == 3


def test_an_attack_runs_on_a_model_and_a_few_images_without_a_trial(tiny_raw, tiny_checkpoint):
    """Attacks see a small protocol, so a notebook calls one on a model and a few images."""
    import torch

    from raypoison.attacks import create_attack
    from raypoison.attacks.context import StandaloneContext
    from raypoison.data import load_dataset
    from raypoison.data.setups import Setup
    from raypoison.models import load_checkpoint

    scenario = parse_suite(tiny_raw).scenarios[0]
    data = load_dataset(scenario.dataset)
    model, _ = load_checkpoint(tiny_checkpoint)
    ctx = StandaloneContext(data, {"victim": model}, epsilon=16 / 255)
    bases = tuple(int(i) for i in torch.nonzero(data.train_y == 1).flatten()[:3])
    target = int(torch.nonzero(data.test_y == 0).flatten()[0])
    setup = Setup(target_class=0, target_index=target, base_class=1, base_indices=bases)
    attack = create_attack("feature_collision", {"iterations": 10, "step": 0.01,
                                                 "step_rule": "refuse"})
    result = attack.craft(ctx, setup, seed=0, index=0)
    poisons = result.poisons
    assert poisons.images.dtype == torch.uint8 and poisons.images.shape == (3, 3, 12, 12)
    change = (poisons.images.int() - data.train_x[list(bases)].int()).abs()
    assert 0 < change.max() <= 16 and poisons.labels == (1, 1, 1)
    assert result.loss_final < result.loss_initial
    with pytest.raises(ValueError, match="build_model"):
        dataclasses.replace(ctx).fresh_victim("victim", 0)
