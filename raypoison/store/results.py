"""Reading a results dataset: every part file, skipping what is not one, deduplicated by key.

Rows are written at least once (a resumed or retried trial may write its key again) and read
exactly once: :func:`load` keeps one row per ``(trial_id, victim, defense, defense_params)``,
preferring a successful row to a failed one and then the latest. Hidden and temporary files are
never read; a foreign file or a truncated part is skipped with a warning, so one bad file never
hides the rest.
"""

from __future__ import annotations

import dataclasses
import io
import posixpath
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raypoison.store.rows import KEY, NO_DEFENSE, SCHEMA, SCHEMA_VERSION, STATUS_OK
from raypoison.store.storage import Location

RESULTS_DIR = "results"
REQUIRED = ("trial_id", "victim", "status")  # a part without these is not ours
PART_PREFIX = "part-"
PARTITION_COLUMNS = ("scenario", "attack")  # results/scenario=…/attack=…/part-….parquet


class SkippedFileWarning(UserWarning):
    """A file in a results folder was not read (foreign, truncated or of another schema)."""


def _is_part_name(name: str) -> bool:
    return name.startswith(PART_PREFIX) and name.endswith(".parquet")


def part_files(location: Location) -> list[str]:
    """The paths of the visible part files; everything else is warned about or ignored."""
    root = location.join(RESULTS_DIR)
    paths = []
    for info in location.list_tree(root):
        name = posixpath.basename(info.path)
        if name.startswith((".", "_")):
            continue  # temporary or hidden: never read
        if info.type != pafs.FileType.File:
            if _is_part_name(name):  # e.g. a copy tool that made a folder of a part's name
                warnings.warn(f"a folder named like a part file in results: {info.path} (not "
                              "read as a part; part files inside it are read like any others)",
                              SkippedFileWarning, stacklevel=2)
            continue
        if not _is_part_name(name):
            warnings.warn(f"skipping foreign file in results: {info.path}",
                          SkippedFileWarning, stacklevel=2)
            continue
        paths.append(info.path)
    return sorted(paths)


def folder_values(path: str) -> dict[str, str]:
    """The partition values a part's path declares (``scenario=…/attack=…``)."""
    parts = posixpath.dirname(path).split("/")
    return {key: value for key, _, value in (p.partition("=") for p in parts)
            if key in PARTITION_COLUMNS and value}


def _disagreement(table: pa.Table, declared: dict[str, str]) -> str | None:
    """Which column of ``table`` holds a value its folder does not declare, or None (a null
    declares nothing)."""
    for key, value in declared.items():
        if key in table.column_names:
            found = {v for v in pc.unique(table[key]).to_pylist() if v is not None and v != value}
            if found:
                shown = ", ".join(repr(v) for v in sorted(found, key=str)[:3])
                return f"its folder says {key}={value} but rows say {shown}"
    return None


def _with_folder_values(table: pa.Table, declared: dict[str, str]) -> pa.Table:
    """``table`` with its folder's partition values where its rows are silent: a column a part
    lacks (an older writer's, or a file written by hand) or a null, as hive-partitioned readers
    (DuckDB, pyarrow) read it."""
    for key, value in declared.items():
        if key not in table.column_names:
            table = table.append_column(key, pa.array([value] * len(table), pa.string()))
        elif table[key].null_count:
            filled = pc.fill_null(table[key].cast(pa.string()), value)
            table = table.set_column(table.column_names.index(key), key, filled)
    return table


def read_part(location: Location, path: str, columns: list[str] | None) -> pa.Table | None:
    """One part file's table cast to the current schema (of ``columns``), or None (with a
    warning) if it is not a readable raypoison part: unreadable, without the key columns, with
    a value that does not cast to its column's type (a foreign ``trial: "notanint"``) or casts
    with a loss (``success: 5``), a part of today's schema version without one of its columns,
    or moved or edited so that its rows' scenario or attack is not the one its folder names
    (readers that take the value from the folder, as DuckDB's and pyarrow's hive partitioning
    do, and this one, which takes it from the rows, would disagree; compaction leaves such a
    part alone). Rows silent on their scenario or attack take the folder's.

    Every column is decoded (and every page's checksum, where the writer stored them, checked),
    whichever ``columns`` are asked for: a resumed run reads only the keys, and a part whose
    keys read but whose other columns are damaged must count as absent there too, or the run
    would take its trials as done while every reader drops them."""
    names = columns or SCHEMA.names
    try:
        data = location.read_bytes(path)
        parquet = pq.ParquetFile(io.BytesIO(data), page_checksum_verification=True)
        stored = parquet.schema_arrow
        missing = [c for c in REQUIRED if c not in stored.names]
        if missing:
            warnings.warn(f"skipping {path}: not a raypoison part (no {missing})",
                          SkippedFileWarning, stacklevel=3)
            return None
        table = parquet.read()
        lacking = _lacking_columns(stored, table)
        if lacking:
            warnings.warn(f"skipping {path}: a part of schema version {SCHEMA_VERSION} without "
                          f"its columns {', '.join(lacking[:5])}", SkippedFileWarning,
                          stacklevel=3)
            return None
        declared = folder_values(posixpath.relpath(path, location.join(RESULTS_DIR)))
        wrong = _disagreement(table, declared)
        if wrong is not None:
            warnings.warn(f"skipping {path}: {wrong}; move it to the folder its rows name",
                          SkippedFileWarning, stacklevel=3)
            return None
        whole = conform(_with_folder_values(table, declared), SCHEMA)
        return whole.select(names)
    except (pa.ArrowException, OSError, ValueError) as err:
        warnings.warn(f"skipping unreadable part {path}: {err}", SkippedFileWarning, stacklevel=3)
        return None


def _lacking_columns(stored: pa.Schema, table: pa.Table) -> list[str]:
    """The columns of :data:`SCHEMA` a part lacks although its footer says it is of today's
    schema version, as this version's writer marks every part: damaged, or edited and written
    back. Older parts lack the columns later versions added and read them as nulls; a part
    without the footer's mark (written by hand, or by another tool) is read as it is; and a
    partition column may be left to the folder's name, as hive-partitioned writers do."""
    declared = (stored.metadata or {}).get(b"raypoison_schema_version", b"")
    if declared != str(SCHEMA_VERSION).encode():
        return []
    present = set(table.column_names)
    return [c for c in SCHEMA.names if c not in present and c not in PARTITION_COLUMNS]


def part_schema(location: Location, path: str) -> pa.Schema:
    """The Arrow schema a part file stores (its footer only)."""
    return pq.read_schema(io.BytesIO(location.read_bytes(path)))


def read_table(uri: str, columns: Iterable[str] | None = None) -> pa.Table:
    """Every row of every readable part, not deduplicated, cast to the current schema."""
    location = Location.parse(uri)
    columns = list(columns) if columns is not None else None
    tables = []
    for path in part_files(location):
        table = read_part(location, path, columns)
        if table is not None:
            tables.append(table)
    if not tables:
        return pa.schema([SCHEMA.field(c) for c in (columns or SCHEMA.names)]).empty_table()
    return pa.concat_tables(tables)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` cast to ``schema``; columns an older part lacks become nulls (``defense``, which
    version 1 lacked, becomes ``none``, as does a missing value: those rows are of undefended
    models)."""
    arrays, present = [], set(table.column_names)
    for field in schema:
        if field.name == "defense" and field.name in present:
            arrays.append(pc.fill_null(table[field.name].cast(field.type), NO_DEFENSE))
        elif field.name in present:
            arrays.append(_cast_without_loss(table[field.name], field))
        elif field.name == "defense":
            arrays.append(pa.array([NO_DEFENSE] * len(table), field.type))
        else:
            arrays.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _cast_without_loss(column: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
    """``column`` cast to ``field``'s type, refusing a number that the cast would change (Arrow
    casts 5 to ``True``; a safe cast already refuses overflow and truncation)."""
    cast = column.cast(field.type)
    source = column.type
    if source != field.type and (pa.types.is_integer(source) or pa.types.is_floating(source)):
        kept = pc.or_kleene(pc.equal(cast.cast(source), column), pc.is_null(column))
        if pa.types.is_floating(source):
            kept = pc.or_kleene(kept, pc.is_nan(column))
        if not pc.all(kept, min_count=0).as_py():
            raise ValueError(f"column {field.name} holds values of type {source} that "
                             f"{field.type} does not hold")
    return cast


def deduplicate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per key: an ``ok`` row wins over a failed one, then the latest ``finished_at``."""
    if df.empty:
        return df
    order = df.assign(_ok=df["status"].eq(STATUS_OK))
    sort_by, ascending = ["_ok"], [False]
    if "finished_at" in df.columns:
        sort_by.append("finished_at")
        ascending.append(False)
    order = order.sort_values(sort_by, ascending=ascending, kind="stable")
    order = order.drop_duplicates(list(KEY), keep="first").drop(columns="_ok")
    by = [c for c in ("scenario", "attack", "trial", "victim", "defense") if c in df.columns]
    return order.sort_values(by if "scenario" in by else list(KEY)).reset_index(drop=True)


class SharedTrialIdWarning(UserWarning):
    """One trial id has rows under more than one scenario or attack: copied or edited rows."""


def warn_shared_trial_ids(df: pd.DataFrame) -> None:
    """A trial id is a digest of its scenario, attack and index, so it names one partition; rows
    of one id in two would share keys, and deduplication would keep one of each pair, whichever
    scenario it came from. Said, with examples, rather than silently."""
    present = [c for c in PARTITION_COLUMNS if c in df.columns]
    if df.empty or not present:
        return
    where = pd.Series(["/".join(map(str, values)) for values in
                       zip(*(df[c].tolist() for c in present), strict=True)], index=df.index)
    spread = where.groupby(df["trial_id"].astype(str)).nunique()
    shared = spread[spread > 1].index
    if len(shared):
        example = shared[0]
        places = sorted(set(where[df["trial_id"].astype(str) == example]))
        warnings.warn(f"{len(shared)} trial id(s) have rows in more than one scenario/attack "
                      f"(e.g. {example} in {', '.join(places[:3])}): rows were copied or "
                      "edited; reading keeps one row per key, from either place",
                      SharedTrialIdWarning, stacklevel=3)


def load(uri: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """The deduplicated results of a dataset at ``uri``: a run's output folder or URI, or the
    ``results/`` folder inside it, which is what analysts tend to pass."""
    if columns is not None:
        columns = list(dict.fromkeys([*KEY, "status", "finished_at", *PARTITION_COLUMNS,
                                      *columns]))
    rows = read_table(run_output(uri), columns).to_pandas()
    warn_shared_trial_ids(rows)
    return deduplicate(rows)


def run_output(uri: str) -> str:
    """``uri``, or its parent when ``uri`` is a run's ``results/`` folder (and holds no
    ``results/`` of its own). Only readers resolve this: a run writes where it is told."""
    location = Location.parse(uri)
    if (posixpath.basename(location.root) != RESULTS_DIR
            or location.exists(location.join(RESULTS_DIR))):
        return uri
    if location.is_local:
        return posixpath.dirname(location.root)
    split = urlsplit(uri)
    return urlunsplit(split._replace(path=posixpath.dirname(split.path.rstrip("/"))))


def committed_trials(uri: str, *, include_failed: bool = True) -> set[str]:
    """Trial ids that already have rows. A trial's rows are written together, so any row counts.

    With ``include_failed=False`` a trial counts only if it has no failed or rejected rows, so a
    resumed run computes failed trials again.
    """
    df = read_table(uri, [*KEY, "status"]).to_pandas()
    if df.empty:
        return set()
    if include_failed:
        return set(df["trial_id"])
    key_ok = df["status"].eq(STATUS_OK).groupby([df[k] for k in KEY], dropna=False).any()
    trial_ok = key_ok.groupby(level="trial_id").all()
    return set(trial_ok[trial_ok].index)


@dataclass
class Stored:
    """What a dataset holds of one trial: whether its undefended rows are there (and all ``ok``),
    whether any row failed or was rejected, and the (label, parameters) of its defense rows."""

    undefended_ok: bool = False
    failed: bool = False
    defenses: set[tuple[str, str]] = dataclasses.field(default_factory=set)


def stored_trials(uri: str, *, include_failed: bool = True) -> dict[str, Stored]:
    """Per trial id, what the dataset holds (:class:`Stored`). With ``include_failed=False`` a
    failed or rejected row does not count as stored, so a resumed run computes it again. A key
    written twice (a failed trial retried) counts as :func:`load` reads it: its ok row wins."""
    df = deduplicate(read_table(uri, [*KEY, "status", "finished_at"]).to_pandas())
    out: dict[str, Stored] = {}
    if df.empty:
        return out
    trials = df["trial_id"].astype(str).to_numpy()
    defenses = df["defense"].fillna(NO_DEFENSE).astype(str).to_numpy()
    params = df["defense_params"].fillna("").astype(str).to_numpy()
    ok = df["status"].eq(STATUS_OK).to_numpy()
    undefended_seen: set[str] = set()
    for trial, defense, param, row_ok in zip(trials, defenses, params, ok, strict=True):
        stored = out.get(trial)
        if stored is None:
            stored = out[trial] = Stored(undefended_ok=True)
        stored.failed = stored.failed or not row_ok
        if defense == NO_DEFENSE:
            undefended_seen.add(trial)
            stored.undefended_ok = stored.undefended_ok and bool(row_ok)
        elif row_ok or include_failed:
            stored.defenses.add((defense, param))
    for trial, stored in out.items():
        stored.undefended_ok = stored.undefended_ok and trial in undefended_seen
    return out
