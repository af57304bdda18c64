"""The command line: bad input exits with code 2, one message naming the key, and no output."""

import pytest

from raypoison.cli import main
from tests.conftest import write_config


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r.update(colour="red"), "colour: unknown key"),
    (lambda r: r["scenarios"][0].update(budget=[5]), "scenarios[0].budget: expected an integer"),
    (lambda r: r["attacks"].append({"name": "frog"}), "attacks[2].name: unknown attack 'frog'"),
    (lambda r: r["scenarios"][0].update(trials=-1), "scenarios[0].trials: must be > 0"),
    (lambda r: r["scenarios"][0]["models"]["net-a"].update(checkpoint="gone.pt", pretrain=None),
     "scenarios[0].models.net-a.checkpoint: not found"),
])
def test_malformed_configs_exit_2_and_write_nothing(tmp_path, tiny_raw, capsys, mutate, expected):
    mutate(tiny_raw)
    config = write_config(tmp_path / "bad.yaml", tiny_raw)
    out = tmp_path / "out"
    assert main(["run", str(config), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert err[0].startswith(f"error: {config}: ")  # the file, then the key
    assert not out.exists()


def test_missing_config_and_bad_filters_exit_2(tmp_path, tiny_raw, capsys):
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "absent.yaml"), "--output", str(out)]) == 2
    config = write_config(tmp_path / "ok.yaml", tiny_raw)
    assert main(["run", str(config), "--output", str(out), "--attacks", "frog"]) == 2
    assert main(["run", str(config), "--output", str(out), "--trials", "x"]) == 2
    assert main(["run", str(config), "--output", str(out), "--cpus-per-worker", "-1"]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and "--attacks" in err and "--trials" in err
    assert "--cpus-per-worker: must be ≥ 0, got -1.0" in err
    assert not out.exists()


def test_filters_that_name_nothing_or_what_the_config_lacks_say_so(tmp_path, tiny_raw, capsys):
    """``--attacks ''`` planned 0 trials and exited 0; ``--defenses`` on a config without
    defenses listed ``(known: )``; a folder given as the config was "not found"."""
    tiny_raw.pop("defenses", None)
    config = write_config(tmp_path / "ok.yaml", tiny_raw)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        main(["run", str(config), "--output", str(out), "--attacks", ""])
    assert exited.value.code == 2
    assert "--attacks: names nothing" in capsys.readouterr().err
    assert main(["run", str(config), "--output", str(out), "--defenses", "strip"]) == 2
    assert main(["validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: --defenses: unknown name 'strip' (the config has no defenses; 'none' "
                   "selects the undefended rows only)",
                   f"error: {tmp_path} is a folder; give a config file (e.g. configs/smoke.yaml)"]
    assert main(["run", str(config), "--output", str(out), "--defenses", "none",
                 "--dry-run"]) == 0  # 'none' alone is a selection
    assert not out.exists()


def test_version_names_the_protocol(capsys):
    from raypoison import PROTOCOL_VERSION, __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == \
        f"raypoison {__version__} (protocol version {PROTOCOL_VERSION})"


def test_corrupt_checkpoint_exits_2_before_writing(tmp_path, tiny_raw, capsys):
    (tmp_path / "bad.pt").write_bytes(b"\x80\x04garbage")
    tiny_raw["scenarios"][0]["models"]["net-a"] = {"arch": "convnet", "checkpoint": "bad.pt"}
    config = write_config(tmp_path / "c.yaml", tiny_raw)
    assert main(["run", str(config), "--output", str(tmp_path / "out")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_validate_counts_trials(tmp_path, tiny_raw, capsys):
    assert main(["validate", str(write_config(tmp_path / "c.yaml", tiny_raw))]) == 0
    assert "tiny: valid, 8 trials" in capsys.readouterr().out


def test_a_dry_run_lists_every_pending_trial_and_starts_and_writes_nothing(tmp_path, tiny_raw,
                                                                           capsys):
    import ray

    config = write_config(tmp_path / "ok.yaml", tiny_raw)
    out = tmp_path / "out"
    ray_before = ray.is_initialized()  # another test's instance may be up; none is started here
    assert main(["run", str(config), "--output", str(out), "--dry-run", "--trials", "0:2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    attacks = [a.get("label", a["name"]) for a in tiny_raw["attacks"]]
    assert len(lines) == 2 * len(attacks) + 2
    assert all(": craft and train; defenses: " in line for line in lines[:-2])
    assert lines[-2] == (f"dry run: {2 * len(attacks)} trials planned, 0 already in {out}, "
                         f"{2 * len(attacks)} to compute")
    assert lines[-1].startswith("time left: no finished trial in this output to measure")
    assert not out.exists() and ray.is_initialized() == ray_before
    assert main(["run", str(config), "--output", str(out), "--dry-run", "--defenses", "x"]) == 2


def test_bench_arguments_are_checked_before_anything_runs(tmp_path, capsys, tiny_raw):
    """An unknown --attacks printed nothing and exited 0; --trials 0 divided by zero."""
    config = write_config(tmp_path / "c.yaml", tiny_raw)
    for argv, said in (
            (["bench", "crafting", str(config), "--attacks", "frog"],
             "--attacks: no attack 'frog'"),
            (["bench", "crafting", str(config), "--trials", "0"], "--trials: must be at least 1"),
            (["bench", "crafting", str(config), "--models", str(tmp_path / "absent")],
             "--models: no folder"),
            (["bench", "scheduler", "--trials", "0"], "--trials: must be at least 1"),
            (["bench", "scheduler", "--workers", "0"], "--workers: must be at least 1")):
        assert main(argv) == 2, argv
        assert said in capsys.readouterr().err, argv
