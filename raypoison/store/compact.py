"""Compaction: a finished run's many small part files -> one deduplicated part per partition.

For each ``scenario=…/attack=…`` folder, the readable parts are read, deduplicated by key as
readers do, written as one new part (atomically), and only then are the parts that were read
removed. A crash in between leaves both, which readers deduplicate; foreign or unreadable files
are left alone (readers keep skipping them with a warning), and so is a part written by a newer
raypoison (a higher schema version, or columns this version does not know): rewriting it in
today's schema would drop what this version cannot read. A partition of one part is rewritten
too when that part predates the current file layout (:func:`raypoison.store.rows.to_part`), so
compacting an older output makes its folder readable by ``pandas.read_parquet``.
"""

from __future__ import annotations

import posixpath
import secrets
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from raypoison.errors import ResultsError
from raypoison.store.results import (
    PART_PREFIX,
    RESULTS_DIR,
    SkippedFileWarning,
    conform,
    deduplicate,
    part_files,
    part_schema,
    read_part,
    run_output,
)
from raypoison.store.rows import SCHEMA, SCHEMA_VERSION, is_part_layout, part_bytes
from raypoison.store.storage import Location


@dataclass
class CompactionSummary:
    partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    rows_before: int = 0
    rows_after: int = 0
    already_compact: int = 0  # partitions that were one part of today's layout already
    left_newer: list[str] = field(default_factory=list)  # parts of a newer schema, untouched


def newer_than_this_version(stored: pa.Schema, table: pa.Table) -> str | None:
    """Why a part cannot be rewritten by this version without losing data, or None: it names
    columns today's schema lacks, or its rows or footer carry a higher schema version."""
    unknown = sorted(n for n in set(stored.names) - set(SCHEMA.names)
                     if not n.startswith("__index_level_"))  # pandas' index: nothing to keep
    if unknown:
        return f"columns this version does not know: {', '.join(unknown[:8])}"
    versions = [int(v) for v in ((stored.metadata or {}).get(b"raypoison_schema_version"),)
                if v is not None and v.isdigit()]
    if table.num_rows:
        highest = pc.max(table["schema_version"]).as_py()
        versions += [] if highest is None else [int(highest)]
    if versions and max(versions) > SCHEMA_VERSION:
        return f"schema version {max(versions)}, newer than this version's {SCHEMA_VERSION}"
    return None


def compact(uri: str) -> CompactionSummary:
    """Compact the run output at ``uri`` (or its ``results/`` folder, as :func:`results.load`
    accepts)."""
    location = Location.parse(run_output(uri))
    if not location.exists(location.join(RESULTS_DIR)):
        raise ResultsError(f"{uri}: no results folder to compact (is it a run's output?)")
    by_partition: dict[str, list[str]] = defaultdict(list)
    for path in part_files(location):
        by_partition[posixpath.dirname(path)].append(path)
    summary = CompactionSummary()
    stamp = secrets.token_hex(4)
    for folder, paths in sorted(by_partition.items()):
        tables, read, old_layout = [], [], False
        for path in paths:
            table = read_part(location, path, None)
            if table is not None:
                stored = part_schema(location, path)
                newer = newer_than_this_version(stored, table)
                if newer is not None:
                    warnings.warn(f"left {path} as it is: written by a newer raypoison ({newer}); "
                                  "compact with that version", SkippedFileWarning, stacklevel=2)
                    summary.left_newer.append(path)
                    continue
                tables.append(conform(table, SCHEMA))
                read.append(path)
                old_layout = old_layout or not is_part_layout(stored)
        if not read or (len(read) < 2 and not old_layout):
            summary.already_compact += bool(read)
            continue  # nothing to gain
        rows = pa.concat_tables(tables).to_pandas()
        kept = deduplicate(rows)
        target = posixpath.join(folder, f"{PART_PREFIX}compact-{stamp}-000001.parquet")
        location.write_bytes(target, part_bytes(pa.Table.from_pandas(kept, schema=SCHEMA,
                                                                     preserve_index=False)))
        for path in read:
            location.fs.delete_file(path)
        summary.partitions += 1
        summary.files_before += len(read)
        summary.files_after += 1
        summary.rows_before += len(rows)
        summary.rows_after += len(kept)
    return summary


__all__ = ["CompactionSummary", "compact", "newer_than_this_version"]
