import numpy as np
import pytest

from raypoison.config.specs import count, expand, parse_trial_range
from raypoison.config.suite import parse_suite
from raypoison.core.identity import trial_id
from raypoison.data.setups import clean_training_indices, sample_setup
from raypoison.errors import ConfigError


def test_ids_are_deterministic_and_unique(tiny_raw):
    a = [s.trial_id for s in expand(parse_suite(tiny_raw))]
    b = [s.trial_id for s in expand(parse_suite(tiny_raw))]
    assert a == b and len(set(a)) == len(a) == 8
    for spec in expand(parse_suite(tiny_raw)):  # the fast path hashes what trial_id defines
        assert spec.trial_id == trial_id(spec.scenario, spec.attack, spec.index)


def test_parameter_change_changes_ids_but_trial_count_does_not(tiny_raw):
    before = {(s.attack.label, s.index): s.trial_id for s in expand(parse_suite(tiny_raw))}
    tiny_raw["scenarios"][0]["trials"] = 6
    grown = {(s.attack.label, s.index): s.trial_id for s in expand(parse_suite(tiny_raw))}
    assert all(grown[k] == v for k, v in before.items())
    tiny_raw["attacks"][1]["params"]["iterations"] = 11
    changed = {(s.attack.label, s.index): s.trial_id for s in expand(parse_suite(tiny_raw))}
    assert changed[("none", 0)] == before[("none", 0)]
    assert changed[("feature_collision", 0)] != before[("feature_collision", 0)]
    tiny_raw["scenarios"][0]["epsilon"] = "8/255"
    assert {s.trial_id for s in expand(parse_suite(tiny_raw))}.isdisjoint(before.values())


def test_options_left_at_their_defaults_do_not_change_ids(tiny_raw):
    before = [s.trial_id for s in expand(parse_suite(tiny_raw))]
    tiny_raw["scenarios"][0]["recipe"]["gamma"] = 0.1  # the default, now written out
    tiny_raw["attacks"][1]["params"]["decay"] = 0.2  # likewise
    assert [s.trial_id for s in expand(parse_suite(tiny_raw))] == before


def test_expansion_is_lazy_and_filters(tiny_raw):
    suite = parse_suite(tiny_raw)
    stream = expand(suite)
    assert next(stream).index == 0  # a generator, not a list
    chosen = list(expand(suite, attacks=["feature_collision"], trials=parse_trial_range("1:3")))
    assert [(s.attack.label, s.index) for s in chosen] == [("feature_collision", 1),
                                                           ("feature_collision", 2)]
    assert count(suite, trials=parse_trial_range("2")) == 2
    with pytest.raises(ConfigError, match="unknown name 'frog'"):
        list(expand(suite, attacks=["frog"]))
    with pytest.raises(ConfigError, match="--trials"):
        parse_trial_range("a:b")


def test_setup_depends_on_seed_and_index_only():
    train = np.repeat(np.arange(5), 40)
    test = np.repeat(np.arange(5), 10)
    setups = [sample_setup(train, test, budget=7, seed=11, index=i) for i in range(50)]
    assert setups[3] == sample_setup(train, test, budget=7, seed=11, index=3)
    assert setups[3] != sample_setup(train, test, budget=7, seed=12, index=3)
    for s in setups:
        assert s.target_class != s.base_class
        assert test[s.target_index] == s.target_class
        assert len(set(s.base_indices)) == 7
        assert all(train[i] == s.base_class for i in s.base_indices)
    assert len({s.target_index for s in setups}) > 10  # targets vary across trials


def test_clean_training_set_is_first_n_per_class_without_bases():
    train = np.repeat(np.arange(3), 20)
    setup = sample_setup(train, np.repeat(np.arange(3), 5), budget=4, seed=0, index=0)
    clean = clean_training_indices(train, setup, per_class=10)
    counts = np.bincount(train[clean], minlength=3)
    assert counts[setup.base_class] == 6 and counts.sum() == 26
    assert not set(clean) & set(setup.base_indices)
    others = [c for c in range(3) if c != setup.base_class]
    assert list(clean[train[clean] == others[0]]) == list(np.flatnonzero(train == others[0])[:10])


def test_seeded_random_subset_keeps_sizes_and_varies_with_the_seed():
    train = np.repeat(np.arange(3), 30)
    setup = sample_setup(train, np.repeat(np.arange(3), 5), budget=4, seed=0, index=0)
    a = clean_training_indices(train, setup, per_class=10, random_seed=1)
    assert np.array_equal(a, clean_training_indices(train, setup, per_class=10, random_seed=1))
    assert not np.array_equal(a, clean_training_indices(train, setup, per_class=10, random_seed=2))
    assert np.bincount(train[a], minlength=3)[setup.base_class] == 6 and len(a) == 26
    assert not set(a) & set(setup.base_indices)
