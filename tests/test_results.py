import re
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypoison.store import results
from raypoison.store.rows import SCHEMA_VERSION
from raypoison.store.sink import ParquetSink
from raypoison.store.storage import Location


def row(trial, victim="v", status="ok", minutes=0, scenario="s", attack="a"):
    return {"schema_version": SCHEMA_VERSION, "trial_id": trial, "victim": victim,
            "scenario": scenario, "attack": attack, "trial": int(trial[1:]), "status": status,
            "success": status == "ok",
            "finished_at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)}


def test_sink_batches_into_partitioned_parts(tmp_path):
    sink = ParquetSink(Location.parse(str(tmp_path)), "run1", rows_per_file=4, flush_seconds=60)
    for i in range(10):
        sink.add([row(f"t{i}", "v1"), row(f"t{i}", "v2")])
    sink.add([row("t99", attack="b")])
    assert sink.files_written == 5  # 20 rows of attack a in parts of 4
    sink.flush()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files[0] == "results/scenario=s/attack=a/part-run1-000001.parquet"
    assert any(f.startswith("results/scenario=s/attack=b/part-run1-") for f in files)
    assert not [f for f in files if ".tmp" in f]
    assert len(results.load(str(tmp_path))) == 21
    assert len(results.load(str(tmp_path / "results"))) == 21  # the results folder itself


def test_sink_puts_each_row_in_its_own_partition(tmp_path):
    """Rows of two attacks in one call land in two folders, each part naming only its own."""
    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    sink.add([row("t1", attack="a"), row("t2", attack="b"), row("t3", attack="a")])
    sink.flush()
    for attack, trials in (("a", ["t1", "t3"]), ("b", ["t2"])):
        (part,) = (tmp_path / "results" / "scenario=s" / f"attack={attack}").glob("part-*")
        table = pq.read_table(part)
        assert set(table["attack"].to_pylist()) == {attack}
        assert sorted(table["trial_id"].to_pylist()) == trials


def test_readers_skip_truncated_foreign_and_temporary_files(tmp_path):
    location = Location.parse(str(tmp_path))
    sink = ParquetSink(location, "r", rows_per_file=100)
    sink.add([row("t1")])
    sink.add([row("t2")])
    sink.flush()
    folder = tmp_path / "results" / "scenario=s" / "attack=a"
    good = next(folder.glob("part-*.parquet")).read_bytes()
    (folder / "part-r-999999.parquet").write_bytes(good[: len(good) // 2])  # truncated
    (folder / "notes.txt").write_text("hello")  # foreign
    pq.write_table(pa.table({"x": [1]}), folder / "part-other-000001.parquet")  # foreign schema
    (folder / ".part-r-000009.parquet.1234.tmp").write_bytes(b"half a file")  # in progress
    (folder / "part-r-000010.parquet").mkdir()  # a folder where a part file belongs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = results.load(str(tmp_path))
        done = results.committed_trials(str(tmp_path))
    messages = [str(w.message) for w in caught if issubclass(w.category,
                                                             results.SkippedFileWarning)]
    assert sorted(df["trial_id"]) == ["t1", "t2"] and done == {"t1", "t2"}
    assert any("notes.txt" in m for m in messages)
    assert any("part-r-999999" in m for m in messages)
    assert any("part-other-000001" in m for m in messages)
    assert any("a folder named like a part file" in m and "part-r-000010" in m for m in messages)
    assert not any(".tmp" in m for m in messages)  # temporary files are silently never read


def _flip_in_column(path, column, flips):
    """Flip bytes of ``path`` inside the data of ``column``'s first chunk (``flips`` counts
    back from the chunk's end), as a disk or a copy damages a file."""
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(names.index(column))
    end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    for k in range(end - flips, end):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("writer", ["raypoison", "no page checksums"])
def test_a_part_damaged_outside_its_keys_is_not_taken_as_done(tmp_path, writer):
    """Resuming reads only a part's keys; a part whose keys read but whose ``success`` is
    damaged used to count its trials as done there, while every reader skipped the part: the
    rows were gone and no run would compute them again. Every reader now decodes the whole
    part, and the writer stores page checksums, so a flipped byte is an error, not a value."""
    from raypoison.store.rows import to_part, to_table

    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    sink.add([row("t1")])
    sink.flush()
    folder = tmp_path / "results" / "scenario=s" / "attack=a"
    damaged = folder / "part-r-000002.parquet"
    if writer == "raypoison":
        sink.add([row("t2"), row("t3")])
        sink.flush()
        _flip_in_column(damaged, "success", 1)
    else:  # an older writer's part: no checksums, so only a decoding error can tell
        pq.write_table(to_part(to_table([row("t2"), row("t3")])), damaged, compression="zstd")
        _flip_in_column(damaged, "success", 5)
    assert pq.read_table(damaged, columns=["trial_id", "victim", "status"]).num_rows == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = results.load(str(tmp_path))
        done = results.committed_trials(str(tmp_path))
        stored = results.stored_trials(str(tmp_path))
    assert list(df["trial_id"]) == ["t1"] and done == {"t1"} and set(stored) == {"t1"}
    skipped = [str(w.message) for w in caught if issubclass(w.category,
                                                            results.SkippedFileWarning)]
    assert len(skipped) == 3 and all("part-r-000002" in m for m in skipped)


def test_a_part_of_todays_version_without_a_column_or_with_a_lossy_value_is_skipped(tmp_path):
    """A part marked with today's schema version but without ``success`` (edited and written
    back) used to read as ``ok`` rows with no outcome, leaving the success cells quietly; an
    integer 5 in ``success`` read as True. Both are skipped, named, by every reader; a part of
    an older version still reads the columns it predates as nulls."""
    from raypoison.store.rows import to_part, to_table

    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    sink.add([row("t1")])
    sink.flush()
    folder = tmp_path / "results" / "scenario=s" / "attack=a"
    table = to_part(to_table([row("t2")]))
    pq.write_table(table.drop_columns(["success"]), folder / "part-lacking.parquet")
    lossy = table.set_column(table.schema.get_field_index("success"), "success",
                             pa.array([5], pa.int64()))
    pq.write_table(lossy, folder / "part-lossy.parquet")
    older = table.drop_columns(["attack_loss_rose", "crafting_model"]).replace_schema_metadata(
        {b"raypoison_schema_version": b"3"})
    pq.write_table(older.set_column(older.schema.get_field_index("trial_id"), "trial_id",
                                    pa.array(["t3"])), folder / "part-older.parquet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = results.load(str(tmp_path))
        done = results.committed_trials(str(tmp_path))
    assert sorted(df["trial_id"]) == ["t1", "t3"] and done == {"t1", "t3"}
    assert df.loc[df["trial_id"] == "t3", "attack_loss_rose"].isna().all()
    skipped = " ".join(str(w.message) for w in caught)
    assert "part-lacking.parquet: a part of schema version 4 without its columns success" in (
        skipped)
    assert "part-lossy.parquet" in skipped and "int64 that bool does not hold" in skipped


def test_a_part_in_a_folder_its_rows_do_not_name_is_skipped_and_left_alone(tmp_path):
    """A part copied into another scenario's folder: DuckDB's hive partitioning reads its rows
    as that scenario, raypoison's reader as theirs. Neither is safe, so it is skipped with the
    two values named, for every reader, and compaction leaves it as it is."""
    from raypoison.store.compact import compact

    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    sink.add([row("t1"), row("t2")])
    sink.add([row("t3", scenario="u")])
    sink.flush()
    part = next((tmp_path / "results" / "scenario=s" / "attack=a").glob("part-*.parquet"))
    moved = tmp_path / "results" / "scenario=u" / "attack=a" / "part-moved-000001.parquet"
    moved.write_bytes(part.read_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = results.load(str(tmp_path), columns=["success"])
        done = results.committed_trials(str(tmp_path))
        compact(str(tmp_path))
    messages = [str(w.message) for w in caught
                if issubclass(w.category, results.SkippedFileWarning) and "moved" in str(w.message)]
    assert len(messages) == 3  # load, committed_trials and compact each said so
    assert "its folder says scenario=u but rows say 's'" in messages[0]
    assert sorted(zip(df["scenario"], df["trial_id"], strict=True)) == [
        ("s", "t1"), ("s", "t2"), ("u", "t3")]
    assert done == {"t1", "t2", "t3"} and moved.exists()


def test_one_trial_id_under_two_scenarios_is_said(tmp_path):
    """A trial id names one scenario and attack; rows claiming another (edited, with the
    folder to match) share its keys, and reading keeps one of each pair: said, not silent."""
    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    sink.add([row("t1"), row("t2")])
    sink.add([row("t1", scenario="u")])
    sink.flush()
    with pytest.warns(results.SharedTrialIdWarning, match=r"1 trial id\(s\).*t1 in s/a, u/a"):
        df = results.load(str(tmp_path))
    assert len(df) == 2
    (tmp_path / "results" / "scenario=u").rename(tmp_path / "elsewhere")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean dataset says nothing
        assert len(results.load(str(tmp_path))) == 2


def test_rows_silent_on_their_partition_take_their_folders_values(tmp_path):
    """A part without scenario/attack columns (an older writer's), or with nulls there, reads as
    its folder names, as DuckDB's and pyarrow's hive partitioning read it: never as a scenario
    of its own, and never as a second place for a trial id."""
    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    sink.add([row("t1"), row("t2")])
    sink.flush()
    folder = tmp_path / "results" / "scenario=s" / "attack=a"
    silent = [{k: v for k, v in row(f"t{i}", victim="w").items() if k not in ("scenario", "attack")}
              for i in (1, 3)]
    pq.write_table(pa.Table.from_pylist(silent), folder / "part-silent.parquet")
    nulls = [row("t4") | {"scenario": None}, row("t5") | {"attack": None}]
    pq.write_table(pa.Table.from_pylist(nulls), folder / "part-nulls.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = results.load(str(tmp_path))
    assert len(df) == 6
    assert set(df["scenario"]) == {"s"} and set(df["attack"]) == {"a"}


def test_dedup_keeps_one_row_per_key_preferring_ok_then_latest(tmp_path):
    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    sink.add([row("t1", status="failed", minutes=5)])
    sink.add([row("t1", status="ok", minutes=1)])
    sink.add([row("t2", status="ok", minutes=1)])
    sink.add([row("t2", status="ok", minutes=3)])
    sink.add([row("t3", status="failed", minutes=1), row("t3", "w", status="failed")])
    sink.flush()
    df = results.load(str(tmp_path))
    assert len(df) == 4
    by_key = df.set_index(["trial_id", "victim"])
    assert by_key.loc[("t1", "v"), "status"] == "ok"
    assert by_key.loc[("t2", "v"), "finished_at"].minute == 3
    assert results.committed_trials(str(tmp_path)) == {"t1", "t2", "t3"}
    assert results.committed_trials(str(tmp_path), include_failed=False) == {"t1", "t2"}


def test_a_defense_rerun_with_other_parameters_keeps_both_rows(tmp_path):
    """A changed default is another defense: its rows stand beside the old ones, and only a
    repeat of the same parameters is a duplicate (the newest ok row wins)."""
    from raypoison.store.compact import compact

    sink = ParquetSink(Location.parse(str(tmp_path)), "r", rows_per_file=1)
    sink.add([dict(row("t1"), defense="none")])
    sink.add([dict(row("t1", minutes=1), defense="pt", defense_params='{"steps": 2000}')])
    sink.add([dict(row("t1", minutes=2), defense="pt", defense_params='{"steps": 500}')])
    sink.add([dict(row("t1", minutes=3), defense="pt", defense_params='{"steps": 500}',
                   success=False)])
    sink.flush()
    df = results.load(str(tmp_path))
    pt = df[df["defense"] == "pt"].set_index("defense_params")
    assert len(df) == 3 and sorted(pt.index) == ['{"steps": 2000}', '{"steps": 500}']
    assert not pt.loc['{"steps": 500}', "success"]  # the newer of the two same-parameter rows
    compact(str(tmp_path))
    assert results.read_table(str(tmp_path)).num_rows == 3  # compaction keeps both variants


def test_empty_or_missing_dataset_reads_as_empty(tmp_path):
    assert results.load(str(tmp_path / "nothing")).empty
    assert results.committed_trials(str(tmp_path)) == set()


def test_duckdb_reads_the_dataset_with_hive_partitions(tmp_path):
    """The README's query, as printed there: dedup by key, completed undefended rows of each
    scenario's newest protocol only, version-1 parts included; the same rows as the README's
    pandas lines over ``results.load``."""
    duckdb = pytest.importorskip("duckdb")

    def versioned(r, version="3"):
        return dict(r, protocol_version=version)

    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    for i in range(6):
        sink.add([versioned(dict(row(f"t{i}", status="ok" if i % 3 else "failed"),
                                 defense="none")),
                  versioned(dict(row(f"t{i}"), defense="strip", success=False))])
    sink.add([versioned(dict(row("t1", minutes=9), defense="none"))])  # a retry's duplicate
    # an older protocol's rows under other trial ids: left out, as the report leaves them
    sink.add([versioned(dict(row(f"t{i}"), defense="none"), "2") for i in (20, 21, 22)])
    sink.flush()
    legacy = [versioned(row(f"t{i}")) for i in (7, 8)] + [versioned(row("t2", minutes=20))]
    folder = tmp_path / "results" / "scenario=s" / "attack=a"
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k not in (
        "scenario", "attack")} | {"schema_version": 1} for r in legacy]),  # no defense column
        folder / "part-legacy.parquet")
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (query,) = re.findall(r"```sql\n(.*?)```", readme, re.S)
    query = query.replace("runs/smoke/results", f"{tmp_path}/results")
    [(scenario, attack, role, n, rate)] = duckdb.sql(query).fetchall()

    df = results.load(str(tmp_path))  # the README's pandas lines
    version = df["protocol_version"].astype(int)
    df = df[version == version.groupby(df["scenario"], observed=True).transform("max")]
    undefended = df[(df["status"] == "ok") & (df["defense"] == "none")]
    # t1, t2 (its later legacy row), t4, t5, t7, t8: failed t0, t3 and protocol 2 left out
    assert (scenario, attack, n) == ("s", "a", 6) and len(undefended) == 6
    assert set(undefended["scenario"]) == {"s"}  # the legacy part's rows, from their folder
    assert rate == pytest.approx(undefended["success"].mean())


def test_compaction_keeps_exactly_the_deduplicated_rows(tmp_path):
    from raypoison.store.compact import compact

    sink = ParquetSink(Location.parse(str(tmp_path)), "r", rows_per_file=3)
    for i in range(20):
        sink.add([row(f"t{i}", status="ok" if i % 4 else "failed", minutes=i)])
    for i in range(0, 20, 4):  # retried trials: a later ok row for each failed one
        sink.add([row(f"t{i}", status="ok", minutes=30 + i)])
    for i in range(5):
        sink.add([row(f"b{i}", attack="b")])
    sink.flush()
    folder = tmp_path / "results" / "scenario=s" / "attack=a"
    (folder / "notes.txt").write_text("left alone")
    before = results.load(str(tmp_path))
    files_before = len(list(tmp_path.rglob("part-*.parquet")))
    done = compact(str(tmp_path))
    after = results.load(str(tmp_path))
    assert done.files_before == files_before and done.files_after == 2
    assert done.rows_before == 30 and done.rows_after == 25 == len(after)
    assert len(list(tmp_path.rglob("part-*.parquet"))) == 2
    assert (folder / "notes.txt").exists()
    assert results.read_table(str(tmp_path)).num_rows == 25  # no duplicates left at all
    columns = ["trial_id", "victim", "status", "success"]
    assert after[columns].equals(before[columns])
    again = compact(str(tmp_path))  # nothing left to gain: said as such, not "0 partitions"
    assert (again.partitions, again.already_compact) == (0, 2)


def test_compact_says_when_there_is_nothing_to_compact(tmp_path, capsys):
    from raypoison.cli import main

    sink = ParquetSink(Location.parse(str(tmp_path)), "r", rows_per_file=2)
    for i in range(3):
        sink.add([row(f"t{i}")])
    sink.add([row("b0", attack="b")])
    sink.flush()
    assert main(["compact", str(tmp_path)]) == 0
    assert main(["compact", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "compacted 1 partitions: 2 files -> 1, 3 rows -> 3; 1 already one part each",
        "nothing to compact: each of the 2 partitions is already one part"]


@pytest.mark.parametrize("newer", ["column", "version"])
def test_compaction_leaves_a_part_of_a_newer_version_as_it_is(tmp_path, newer):
    """Rewriting a newer raypoison's part in today's schema would drop its new columns (compact
    once deleted such a part and kept its rows without them): it is left alone, with a warning."""
    from raypoison.store.compact import compact
    from raypoison.store.rows import SCHEMA_VERSION, to_table

    sink = ParquetSink(Location.parse(str(tmp_path)), "r", rows_per_file=1)
    for i in range(3):
        sink.add([row(f"t{i}")])
    sink.flush()
    folder = tmp_path / "results" / "scenario=s" / "attack=a"
    table = to_table([row("t9")])
    if newer == "column":
        table = table.append_column("new_metric", pa.array([0.5]))
    else:
        table = table.set_column(table.schema.get_field_index("schema_version"), "schema_version",
                                 pa.array([SCHEMA_VERSION + 1], pa.int16()))
    pq.write_table(table, folder / "part-newer-000001.parquet")
    with pytest.warns(UserWarning, match=r"left .*part-newer-000001.parquet as it is: written by "
                                         r"a newer raypoison"):
        done = compact(str(tmp_path))
    assert done.left_newer == [str(folder / "part-newer-000001.parquet")]
    assert (done.files_before, done.files_after, done.rows_after) == (3, 1, 3)
    kept = pq.read_table(folder / "part-newer-000001.parquet")
    assert kept.equals(table)  # untouched, its new column included
    assert sorted(results.load(str(tmp_path))["trial_id"]) == ["t0", "t1", "t2", "t9"]


def test_a_part_with_a_pandas_index_column_is_compacted_not_left_as_newer(tmp_path):
    from raypoison.store.compact import compact
    from raypoison.store.rows import to_table

    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    sink.add([row("t0")])
    sink.flush()
    folder = tmp_path / "results" / "scenario=s" / "attack=a"
    table = to_table([row("t1")])
    pq.write_table(table.append_column("__index_level_0__", pa.array([7])),
                   folder / "part-pandas-000001.parquet")
    done = compact(str(tmp_path))
    assert done.left_newer == [] and (done.files_before, done.files_after) == (2, 1)
    assert sorted(results.load(str(tmp_path))["trial_id"]) == ["t0", "t1"]


def test_pandas_and_pyarrow_read_the_results_folder_itself(tmp_path):
    """``pd.read_parquet(OUTPUT/results)`` merges the Hive keys of the folder names with the
    keys stored in each part; a lone part still carries its keys."""
    import pandas as pd

    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    for r in (row("t1"), row("t2", attack="b"), row("t3", scenario="z")):
        sink.add([r])  # one trial's rows at a time, as the driver adds them
    sink.flush()
    for df in (pd.read_parquet(tmp_path / "results"),
               pq.read_table(tmp_path / "results").to_pandas()):
        got = sorted(zip(df["trial_id"], df["scenario"].astype(str), df["attack"].astype(str),
                         strict=True))
        assert got == [("t1", "s", "a"), ("t2", "s", "b"), ("t3", "z", "a")]
    [lone] = (tmp_path / "results" / "scenario=z" / "attack=a").glob("part-*.parquet")
    assert pd.read_parquet(lone)["scenario"].astype(str).tolist() == ["z"]
    assert results.load(str(tmp_path))["scenario"].tolist() == ["s", "s", "z"]


def test_compaction_rewrites_an_older_layout_part_so_pandas_reads_the_folder(tmp_path):
    """A part written before the partition keys were dictionary-encoded (plain strings) makes
    pandas refuse the folder; compacting rewrites even a partition of one such part."""
    import pandas as pd

    from raypoison.store.compact import compact
    from raypoison.store.rows import to_table

    sink = ParquetSink(Location.parse(str(tmp_path)), "r")
    sink.add([row("t2", attack="b")])
    sink.flush()
    old = tmp_path / "results" / "scenario=s" / "attack=a"  # found first, as pyarrow lists
    old.mkdir(parents=True)
    pq.write_table(to_table([row("t1")]), old / "part-old-000001.parquet")
    with pytest.raises(pa.ArrowTypeError, match="scenario"):
        pd.read_parquet(tmp_path / "results")
    done = compact(str(tmp_path))
    assert (done.partitions, done.files_before, done.files_after) == (1, 1, 1)
    df = pd.read_parquet(tmp_path / "results")
    assert sorted(zip(df["trial_id"], df["attack"].astype(str), strict=True)) == [
        ("t1", "a"), ("t2", "b")]
    assert compact(str(tmp_path)).partitions == 0  # nothing left to rewrite


def test_a_failed_trial_retried_to_success_counts_as_stored_and_can_take_new_defenses(tmp_path):
    """Run 1 failed trial T; a --retry-failed run wrote it ok with defense d1. Planning must read
    each key as load does (its ok row wins): T is done, and adding d2 plans only d2 (it used to
    plan nothing, or the whole trial again under --retry-failed)."""
    import copy

    from raypoison.config.specs import expand
    from raypoison.config.suite import parse_suite
    from raypoison.core.identity import defense_key
    from raypoison.execution.runner import plan_trial
    from tests.test_defenses import PYP

    raw = copy.deepcopy(PYP)
    raw["scenarios"][0]["trials"] = 1
    raw["attacks"] = [raw["attacks"][1]]  # BadNets
    raw["defenses"] = ["spectral_signatures", "fine_tuning"]
    spec = next(iter(expand(parse_suite(raw))))
    d1, d2 = spec.defenses
    label, params = defense_key(d1)
    sink = ParquetSink(Location.parse(str(tmp_path)), "r", rows_per_file=1)
    sink.add([dict(row("t0", status="failed"), trial_id=spec.trial_id, defense="none")])
    sink.add([dict(row("t0", minutes=5), trial_id=spec.trial_id, defense="none"),
              dict(row("t0", minutes=5), trial_id=spec.trial_id, defense=label,
                   defense_params=params)])
    sink.flush()
    stored = results.stored_trials(str(tmp_path))[spec.trial_id]
    assert stored.undefended_ok and not stored.failed
    for include_failed in (True, False):
        todo = plan_trial(spec, stored, include_failed)
        assert todo is not None and todo.defenses == (d2,) and not todo.write_undefended


def test_rows_survive_a_stop_that_lands_inside_a_write(tmp_path, monkeypatch):
    """SIGTERM reaches the driver as KeyboardInterrupt, at any line: one landing while a part is
    being written must leave the rows for the run's last flush (they were dropped, uncounted)."""
    sink = ParquetSink(Location.parse(str(tmp_path)), "r", rows_per_file=100)
    sink.add([row("t1"), row("t2")])
    write = Location.write_bytes

    def interrupted(self, path, data):
        monkeypatch.setattr(Location, "write_bytes", write)  # the next write goes through
        raise KeyboardInterrupt

    monkeypatch.setattr(Location, "write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sink.flush()
    sink.flush()  # the run's last flush, after the stop
    assert sink.rows_written == 2 and sink.rows_lost == 0
    assert sorted(results.load(str(tmp_path))["trial_id"]) == ["t1", "t2"]
