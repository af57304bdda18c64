import pytest

from raypoison.config.suite import load_suite, parse_suite
from raypoison.errors import ConfigError
from tests.conftest import write_config


def error_of(raw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_suite(raw)
    return info.value


def test_valid_config_is_frozen_and_typed(tiny_raw):
    suite = parse_suite(tiny_raw)
    scenario = suite.scenarios[0]
    assert scenario.epsilon == pytest.approx(16 / 255)
    assert scenario.victims == ("net-a",)
    assert scenario.role("net-a") == "white-box"
    assert suite.attacks[1].params.iterations == 10
    assert suite.attacks[1].params.decay == 0.2  # the declared default
    with pytest.raises(AttributeError):
        scenario.budget = 7  # frozen


def test_smoke_config_in_the_repository_is_valid():
    suite = load_suite("configs/smoke.yaml")
    assert [a.label for a in suite.attacks] == ["none", "feature_collision"]


@pytest.mark.parametrize("mutate, path, words", [
    (lambda r: r["scenarios"][0].update(colour="red"), "scenarios[0].colour", "unknown key"),
    (lambda r: r["scenarios"][0].update(budget="five"), "scenarios[0].budget", "integer"),
    (lambda r: r["scenarios"][0].update(trials=-3), "scenarios[0].trials", "> 0"),
    (lambda r: r["attacks"].append({"name": "frog"}), "attacks[2].name", "unknown attack 'frog'"),
    (lambda r: r["scenarios"][0]["models"]["net-a"].update(arch="resnet81"),
     "scenarios[0].models.net-a.arch", "unknown model 'resnet81'"),
    (lambda r: r["scenarios"][0]["dataset"].update(name="cifar11"),
     "scenarios[0].dataset.name", "unknown data set"),
    (lambda r: r["scenarios"][0].update(epsilon="8/0"), "scenarios[0].epsilon", "fraction"),
    (lambda r: r["scenarios"][0].update(attacker="net-z"), "scenarios[0].attacker", "unknown model"),
    (lambda r: r["scenarios"][0].update(attacker=["net-a", "net-z"]), "scenarios[0].attacker[1]",
     "unknown model 'net-z'"),
    (lambda r: r["scenarios"][0].update(attacker=["net-a", "net-a"]), "scenarios[0].attacker",
     "listed twice"),
    (lambda r: r["scenarios"][0].update(attacker=[]), "scenarios[0].attacker", "at least one"),
    (lambda r: (r["scenarios"][0]["models"].update({"net-b": r["scenarios"][0]["models"]["net-a"]}),
                r["scenarios"][0].update(attacker=["net-a", "net-b"]),
                r["attacks"].append({"name": "hidden_trigger_backdoor"})),
     "scenarios[0].attacker", "'hidden_trigger_backdoor' crafts on one model"),
    (lambda r: (r["scenarios"][0]["models"].update({"net-b": {"arch": "convnet"}}),
                r["scenarios"][0].update(attacker=["net-a", "net-b"])),
     "scenarios[0].models.net-b", "crafts on the attacker"),
    (lambda r: r["scenarios"][0].update(budget=100, train_per_class=None),
     "scenarios[0].budget", "exceed"),
    (lambda r: r["attacks"][1]["params"].update(step=-1), "attacks[1].params.step", "> 0"),
    (lambda r: r["execution"].update(workers=0), "execution.workers", "> 0"),
    (lambda r: r["scenarios"][0]["recipe"].update(schedule="onecycle"),
     "scenarios[0].recipe.milestones", "schedule 'step' only"),
    (lambda r: r["scenarios"][0]["recipe"].update(schedule="cosine"),
     "scenarios[0].recipe.schedule", "cosine"),
    (lambda r: r["scenarios"][0]["models"]["net-a"].update(checkpoint="nowhere.pt"),
     "scenarios[0].models.net-a.checkpoint", "not found"),
    # a victim named "trial" would overwrite its saved trial's poisons (trial.pt)
    (lambda r: r["scenarios"][0]["models"].update(trial={"arch": "convnet"}),
     "scenarios[0].models.trial", "reserved"),
])
def test_bad_configs_name_the_key(tiny_raw, mutate, path, words):
    mutate(tiny_raw)
    err = error_of(tiny_raw)
    assert err.path == path
    assert words in str(err)


def test_missing_required_key(tiny_raw):
    del tiny_raw["scenarios"][0]["budget"]
    assert error_of(tiny_raw).path == "scenarios[0].budget"


def test_duplicate_attack_labels_are_rejected(tiny_raw):
    tiny_raw["attacks"].append({"name": "none"})
    err = error_of(tiny_raw)
    assert err.path == "attacks[2].label" and "used twice (also by attacks[0])" in str(err)


def test_a_label_a_sweep_repeats_is_named_where_the_file_has_it(tiny_raw):
    """After a sweep, the list has more entries than the file: the error used to name
    attacks[3] of a file with three."""
    tiny_raw["attacks"] = [
        {"name": "feature_collision", "label": "fc", "sweep": {"iterations": [5, 10]}},
        {"name": "feature_collision", "label": "fc-iterations10"}]
    err = error_of(tiny_raw)
    assert err.path == "attacks[1].label"
    assert "'fc-iterations10' is used twice (also by attacks[0].sweep[1])" in str(err)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenarios: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_suite(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_suite(tmp_path / "absent.yaml")


def test_a_yaml_error_names_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nscenarios:\n  - name: [a, b\n    epsilon: 1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML, line 4, column 12: .*flow sequence"):
        load_suite(bad)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, tiny_raw):
    """YAML keeps the last of two equal keys silently: ``epsilon`` written twice would run the
    benchmark at a budget nobody meant."""
    text = write_config(tmp_path / "c.yaml", tiny_raw).read_text()
    assert load_suite(tmp_path / "c.yaml")  # the file as written is fine
    doubled = text.replace("  epsilon:", "  epsilon: 1.0\n  epsilon:", 1)
    if doubled == text:  # epsilon is not the scenario's first key in this dump: add it twice
        doubled = text.replace("- name:", "- epsilon: 0.5\n  epsilon: 1.0\n  name:", 1)
    (tmp_path / "d.yaml").write_text(doubled)
    with pytest.raises(ConfigError, match=r"line (\d+): key 'epsilon' is given twice in one "
                                          r"mapping \(first on line \d+\)"):
        load_suite(tmp_path / "d.yaml")
    merged = tmp_path / "m.yaml"  # a merge key may be overridden: that is what it is for
    merged.write_text("base: &b {lr: 0.1, epochs: 2}\nrecipe:\n  <<: *b\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="base: unknown key"):  # parsed, then refused by name
        load_suite(merged)
    # a merged mapping that merges another, used before it is built: PyYAML flattens the
    # anchored mapping in place, which a check made after flattening took for a repeated key
    nested = tmp_path / "n.yaml"
    nested.write_text(
        "a: {x: &base {classes: 4, size: 20}, y: &pre {<<: *base, classes: 5}}\n"
        "b: {<<: *pre, size: 30}\nc: [{<<: [*pre, *base], size: 1}]\n")
    with pytest.raises(ConfigError, match=r"n\.yaml: a: unknown key"):  # parsed, then refused
        load_suite(nested)
    twice_in_merge = tmp_path / "t.yaml"
    twice_in_merge.write_text("a: &a {k: 1, k: 2}\nb: {<<: *a}\n")
    with pytest.raises(ConfigError, match="line 1: key 'k' is given twice"):
        load_suite(twice_in_merge)


def test_a_yaml_cycle_and_a_huge_integer_get_messages_not_tracebacks(tmp_path, tiny_raw):
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match=r"cycle\.yaml: a: unknown key"):
        load_suite(cycle)
    tiny_raw["scenarios"][0]["budget"] = 10**400
    with pytest.raises(ConfigError, match=r"must be at least the budget \(1000"):
        parse_suite(tiny_raw)


@pytest.mark.parametrize("key, value", [("lr", ".nan"), ("lr", ".inf"), ("weight_decay", ".nan"),
                                        ("gamma", "-5")])
def test_non_finite_and_negative_recipe_numbers_are_refused(tmp_path, tiny_raw, key, value):
    """NaN passes every range check written as a comparison; a NaN learning rate trained a model
    of NaNs whose rows said ok."""
    tiny_raw["scenarios"][0].setdefault("recipe", {})[key] = "__VALUE__"
    path = write_config(tmp_path / "c.yaml", tiny_raw)
    path.write_text(path.read_text().replace("__VALUE__", value))
    match = "finite" if value.startswith(".") else "must be > 0"
    with pytest.raises(ConfigError, match=rf"scenarios\[0\]\.recipe\.{key}: .*{match}"):
        load_suite(path)


def test_nan_is_refused_anywhere_in_the_file_and_in_a_fraction(tmp_path, tiny_raw):
    tiny_raw["attacks"][1]["params"]["step"] = "__V__"  # an attack's own parameter
    path = write_config(tmp_path / "c.yaml", tiny_raw)
    path.write_text(path.read_text().replace("__V__", ".nan"))
    with pytest.raises(ConfigError, match=r"attacks\[1\]\.params\.step: must be a finite"):
        load_suite(path)
    tiny_raw["attacks"][1]["params"]["step"] = 0.01
    tiny_raw["scenarios"][0]["epsilon"] = "inf"
    with pytest.raises(ConfigError, match=r"scenarios\[0\]\.epsilon: must be a finite"):
        parse_suite(tiny_raw)


def test_milestones_must_increase(tiny_raw):
    tiny_raw["scenarios"][0]["recipe"] = {"epochs": 10, "milestones": [8, 2]}
    with pytest.raises(ConfigError, match=r"recipe\.milestones\[1\]: must come after"):
        parse_suite(tiny_raw)


def test_checkpoint_paths_resolve_against_the_config_folder(tmp_path, tiny_raw, tiny_checkpoint):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.pt").write_bytes(tiny_checkpoint)
    tiny_raw["scenarios"][0]["models"]["net-a"] = {"arch": "convnet", "checkpoint": "models/a.pt"}
    suite = load_suite(write_config(tmp_path / "c.yaml", tiny_raw))
    assert suite.scenarios[0].models["net-a"].checkpoint == str(tmp_path / "models" / "a.pt")


def test_relative_paths_from_variables_follow_the_working_folder(tmp_path, tiny_raw,
                                                                 tiny_checkpoint, monkeypatch):
    (tmp_path / "work" / "zoo").mkdir(parents=True)
    (tmp_path / "work" / "zoo" / "a.pt").write_bytes(tiny_checkpoint)
    (tmp_path / "configs").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("ZOO", "zoo")  # relative, as a user types it in the shell
    tiny_raw["scenarios"][0]["models"]["net-a"] = {"arch": "convnet", "checkpoint": "$ZOO/a.pt"}
    suite = load_suite(write_config(tmp_path / "configs" / "c.yaml", tiny_raw))
    assert suite.scenarios[0].models["net-a"].checkpoint == str(tmp_path / "work/zoo/a.pt")
    monkeypatch.delenv("ZOO")
    with pytest.raises(ConfigError, match="environment variable ZOO is not set"):
        load_suite(tmp_path / "configs" / "c.yaml")


def test_a_one_model_attacker_list_is_that_model(tiny_raw):
    """``attacker: [net-a]`` runs as ``attacker: net-a`` and keeps its trial ids."""
    from raypoison.config.specs import expand

    plain = parse_suite(tiny_raw)
    listed = parse_suite({**tiny_raw, "scenarios": [dict(tiny_raw["scenarios"][0],
                                                          attacker=["net-a"])]})
    assert listed.scenarios[0].attacker == "net-a"
    assert [s.trial_id for s in expand(listed)] == [s.trial_id for s in expand(plain)]


def test_a_clean_label_backdoor_with_its_own_model_ignores_the_attacker_list(tiny_raw):
    scenario = tiny_raw["scenarios"][0]
    scenario["models"]["net-b"] = scenario["models"]["net-a"]
    scenario["attacker"] = ["net-a", "net-b"]
    tiny_raw["attacks"] = [{"name": "clean_label_backdoor", "params": {"model": "net-b"}}]
    assert parse_suite(tiny_raw).scenarios[0].attackers == ("net-a", "net-b")
    tiny_raw["attacks"] = [{"name": "clean_label_backdoor"}]  # on the attacker: which one?
    assert error_of(tiny_raw).path == "scenarios[0].attacker"


def test_what_the_data_set_rules_out_is_refused_before_any_trial(tiny_raw):
    """BadNets' default 50 poisons on a training set with 36 images outside the target class, or
    a trigger larger than the 12 px images: every trial would fail at craft time while the run
    reported itself completed."""
    tiny_raw["attacks"] = [{"name": "badnets"}]  # 50 poisons; 12 a class, 3 other classes
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.params: poisons: 50, but the training "
                                          r"set has at most 36 images outside the target class"):
        parse_suite(tiny_raw)
    tiny_raw["attacks"] = [{"name": "badnets", "params": {"poisons": 36}}]
    assert parse_suite(tiny_raw)
    tiny_raw["attacks"][0]["params"]["trigger"] = {"kind": "checkerboard", "size": 10,
                                                   "offset": 3}
    with pytest.raises(ConfigError, match=r"trigger: a 10 px patch 3 px from the corner does not "
                                          r"fit the data set's 12x12 images"):
        parse_suite(tiny_raw)
    tiny_raw["attacks"] = [{"name": "badnets", "params": {"poisons": 30}}]
    tiny_raw["scenarios"][0]["patch_size"] = 13  # the trigger's size when it names none
    with pytest.raises(ConfigError, match=r"trigger: a 13 px patch 0 px from the corner"):
        parse_suite(tiny_raw)
    tiny_raw["attacks"] = [{"name": "none"}]  # no patch: the scenario's patch_size is unused
    assert parse_suite(tiny_raw)
