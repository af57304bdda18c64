"""Compaction: a finished run's many small part files -> one deduplicated part per partition.

For each ``scenario=…/attack=…`` folder, the readable parts are read, deduplicated by key as
readers do, written as one new part (atomically), and only then are the parts that were read
removed. A crash in between leaves both, which readers deduplicate; foreign or unreadable files
are left alone (readers keep skipping them with a warning). A partition of one part is rewritten
too when that part predates the current file layout (:func:`raypoison.store.rows.to_part`), so
compacting an older output makes its folder readable by ``pandas.read_parquet``.
"""

from __future__ import annotations

import io
import posixpath
import secrets
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from raypoison.store.results import (
    PART_PREFIX,
    conform,
    deduplicate,
    part_files,
    part_schema,
    read_part,
    run_output,
)
from raypoison.store.rows import SCHEMA, is_part_layout, to_part
from raypoison.store.storage import Location


@dataclass
class CompactionSummary:
    partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    rows_before: int = 0
    rows_after: int = 0


def compact(uri: str) -> CompactionSummary:
    """Compact the run output at ``uri`` (or its ``results/`` folder, as :func:`results.load`
    accepts)."""
    location = Location.parse(run_output(uri))
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
                tables.append(conform(table, SCHEMA))
                read.append(path)
                old_layout = old_layout or not is_part_layout(part_schema(location, path))
        if len(read) < 2 and not old_layout:
            continue  # nothing to gain
        rows = pa.concat_tables(tables).to_pandas()
        kept = deduplicate(rows)
        buffer = io.BytesIO()
        pq.write_table(to_part(pa.Table.from_pandas(kept, schema=SCHEMA, preserve_index=False)),
                       buffer, compression="zstd")
        target = posixpath.join(folder, f"{PART_PREFIX}compact-{stamp}-000001.parquet")
        location.write_bytes(target, buffer.getvalue())
        for path in read:
            location.fs.delete_file(path)
        summary.partitions += 1
        summary.files_before += len(read)
        summary.files_after += 1
        summary.rows_before += len(rows)
        summary.rows_after += len(kept)
    return summary


__all__ = ["CompactionSummary", "compact"]
