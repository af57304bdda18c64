"""The result row: one per (trial, victim, defense). Its schema is versioned and documented in the
README.

Rows are plain dicts while they travel from a worker to the driver; the sink turns them into Arrow
tables with :data:`SCHEMA`. Every producer (the trial, its defenses, the worker's stamp, the
scheduler's failure rows) gathers fields in :class:`Fields`, which refuses a name outside the
schema where it is set, and builds rows with :func:`trial_rows`; the worker then checks each
trial's rows against the schema's types (:func:`check_rows`), so a bad value becomes that trial's
failure row, with a message, in the worker, and never reaches the driver's buffers.

``(trial_id, victim, defense, defense_params)`` is the key: readers keep one row per key. Every
trial has a row per victim with ``defense = "none"`` (the undefended model; no parameters); a
suite with defenses adds a row per victim and defense, which repeats the undefended model's
fields and adds the defense's own. The parameters are part of the key because a label run with
new parameters (a changed default) is another defense, whose rows stand beside the old ones.

Version 2 added the defense columns and ``poisons``; a version-1 part reads as defense ``none``.
Version 3 added ``target_margin`` and ``poisons_fit``; older parts read them as nulls.
Version 4 added ``attack_loss_rose`` and ``crafting_model``; older parts read them as nulls.

A part file stores the partition columns (``scenario``, ``attack``) dictionary-encoded
(:func:`to_part`), the type pyarrow gives the same keys read from the Hive folder names, so that
``pandas.read_parquet(OUTPUT/results)`` and ``pyarrow.parquet.read_table`` on the folder merge
the two; with plain strings in the file they refuse ("Unable to merge: Field scenario has
incompatible types"). A single part still reads alone, keys included. Readers cast back to
:data:`SCHEMA`'s strings.
"""

from __future__ import annotations

import io
import json
import traceback
from datetime import UTC, datetime
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from raypoison import PROTOCOL_VERSION, __version__
from raypoison.core.identity import NO_DEFENSE
from raypoison.core.schema import to_plain

SCHEMA_VERSION = 4
KEY = ("trial_id", "victim", "defense", "defense_params")

STATUS_OK = "ok"  # the trial ran; for attacks that evaluate, success is set
STATUS_FAILED = "failed"  # an error in the trial or its worker; ``error`` says which phase
STATUS_REJECTED = "rejected"  # the poisons broke a check; ``poison_check`` says which

SCHEMA = pa.schema(
    [
        ("schema_version", pa.int16()),
        ("protocol_version", pa.string()),
        ("run_id", pa.string()),
        ("suite", pa.string()),
        ("trial_id", pa.string()),
        ("scenario", pa.string()),
        ("attack", pa.string()),
        ("attack_name", pa.string()),
        ("attack_params", pa.string()),
        ("trial", pa.int32()),
        ("epsilon", pa.float64()),
        ("patch_size", pa.int32()),
        ("victim", pa.string()),
        ("victim_arch", pa.string()),
        ("role", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("target_class", pa.int32()),
        ("target_index", pa.int64()),
        ("base_class", pa.int32()),
        ("base_indices", pa.list_(pa.int64())),
        ("success", pa.bool_()),
        ("target_pred", pa.int32()),
        ("clean_accuracy", pa.float64()),
        ("attack_success_rate", pa.float64()),
        ("target_margin", pa.float64()),
        ("poisons_fit", pa.float64()),
        ("trigger", pa.string()),
        ("poisons", pa.int32()),
        ("defense", pa.string()),
        ("defense_name", pa.string()),
        ("defense_params", pa.string()),
        ("trusted_size", pa.int32()),
        ("detection_score", pa.float64()),
        ("clean_accuracy_repaired", pa.float64()),
        ("attack_success_rate_repaired", pa.float64()),
        ("success_repaired", pa.bool_()),
        ("target_pred_repaired", pa.int32()),
        ("flagged", pa.int32()),
        ("flag_precision", pa.float64()),
        ("flag_recall", pa.float64()),
        ("flag_auc", pa.float64()),
        ("seconds_defense", pa.float64()),
        ("poisons_valid", pa.bool_()),
        ("poison_check", pa.string()),
        ("poison_linf", pa.float64()),
        ("attack_iterations", pa.int32()),
        ("attack_loss_initial", pa.float64()),
        ("attack_loss_final", pa.float64()),
        ("attack_loss_rose", pa.bool_()),
        ("crafting_model", pa.string()),
        ("craft_batch", pa.int16()),
        ("seed_setup", pa.int64()),
        ("seed_craft", pa.int64()),
        ("seed_train", pa.int64()),
        ("seconds_setup", pa.float64()),
        ("seconds_craft", pa.float64()),
        ("seconds_check", pa.float64()),
        ("seconds_train", pa.float64()),
        ("seconds_eval", pa.float64()),
        ("seconds_total", pa.float64()),
        ("worker", pa.string()),
        ("node", pa.string()),
        ("device", pa.string()),
        ("attempt", pa.int16()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("raypoison_version", pa.string()),
        ("torch_version", pa.string()),
        ("ray_version", pa.string()),
    ],
    metadata={b"raypoison_schema_version": str(SCHEMA_VERSION).encode()},
)
COLUMNS = frozenset(SCHEMA.names)


class TrialLike(Protocol):
    """What rows read of a trial spec (:class:`raypoison.config.specs.TrialSpec`, which sits above
    the store): its identity, scenario (name, ε, victims, roles), attack and defenses."""

    @property
    def trial_id(self) -> str: ...

    @property
    def suite(self) -> str: ...

    @property
    def index(self) -> int: ...

    @property
    def write_undefended(self) -> bool: ...

    @property
    def scenario(self) -> Any: ...

    @property
    def attack(self) -> Any: ...

    @property
    def defenses(self) -> tuple[Any, ...]: ...


class RowFieldError(ValueError):
    """A row field outside :data:`SCHEMA`, or a value its column cannot hold."""


class Fields(dict):
    """Row fields being gathered: a name outside :data:`SCHEMA` is refused where it is set."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self.update(*args, **kwargs)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in COLUMNS:
            raise RowFieldError(f"row field {key!r} is not in the schema")
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]


def now() -> datetime:
    return datetime.now(UTC)


def trial_fields(spec: TrialLike) -> Fields:
    """The fields every row of a trial shares, known before it runs."""
    return Fields({
        "schema_version": SCHEMA_VERSION,
        "protocol_version": PROTOCOL_VERSION,
        "suite": spec.suite,
        "trial_id": spec.trial_id,
        "scenario": spec.scenario.name,
        "attack": spec.attack.label,
        "attack_name": spec.attack.name,
        "attack_params": json.dumps(to_plain(spec.attack.params), sort_keys=True),
        "trial": spec.index,
        "epsilon": spec.scenario.epsilon,
        "patch_size": spec.scenario.patch_size,
        "seed_setup": spec.scenario.seed,
        "raypoison_version": __version__,
    })


def trial_rows(spec: TrialLike, common: dict[str, Any], per: dict[str, dict[str, Any]] | None = None,
               crafted_on: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Complete rows, every schema field set: per victim, the undefended row (``common`` and the
    victim's own fields), then, if the defenses ran on it, a row per defense of the spec that
    adds that defense's fields (``per[victim]["defenses"][label]``). A trial that failed, was
    rejected or trains nothing has undefended rows only."""
    scenario = spec.scenario
    out = []
    for victim in scenario.victims:
        own = dict((per or {}).get(victim, {}))
        defended = own.pop("defenses", {})
        row = Fields(dict.fromkeys(SCHEMA.names))
        row.update(common)
        row.update(victim=victim, victim_arch=scenario.models[victim].arch,
                   role=scenario.role(victim, crafted_on), defense=NO_DEFENSE)
        row.update(own)
        if spec.write_undefended:
            out.append(dict(row))
        for defense in spec.defenses if defended or not spec.write_undefended else ():
            defended_row = Fields(row)
            defended_row.update(defense=defense.label, defense_name=defense.name,
                                defense_params=json.dumps(to_plain(defense.params), sort_keys=True))
            defended_row.update(defended.get(defense.label, {}))
            out.append(dict(defended_row))
    return out


def stamp(rows: list[dict[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    """``rows`` with ``fields`` (who ran them, where) set on each: the worker's stamp."""
    checked = Fields(fields)
    for row in rows:
        row.update(checked)
    return rows


def check_rows(rows: list[dict[str, Any]]) -> str | None:
    """What is wrong with ``rows`` against :data:`SCHEMA` (the first unknown field, or the first
    column whose values its type cannot hold, with the value), or None if nothing is."""
    for row in rows:
        unknown = sorted(set(row) - COLUMNS)
        if unknown:
            return f"row field {unknown[0]!r} is not in the schema"
    for field in SCHEMA:
        values = [row.get(field.name) for row in rows]
        try:
            pa.array(values, type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError) as err:
            bad = next((v for v in values if not _fits(v, field.type)), values[0])
            return (f"row field {field.name!r} ({field.type}) cannot hold {type(bad).__name__} "
                    f"{str(bad)[:80]!r}: {err}")
    return None


def _fits(value: Any, type_: pa.DataType) -> bool:
    try:
        pa.array([value], type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return False
    return True


def describe_error(err: BaseException, phase: str | None = None) -> str:
    where = f"{phase}: " if phase else ""
    tail = "".join(traceback.format_exception(err)[-3:]).strip()
    return f"{where}{type(err).__name__}: {err}\n{tail}"


def failure_rows(spec: TrialLike, error: str, *, started_at: datetime | None = None,
                 status: str = STATUS_FAILED, **extra: Any) -> list[dict[str, Any]]:
    """Rows that record a trial which could not run, with the reason."""
    common = trial_fields(spec)
    common.update(status=status, error=error, started_at=started_at or now(), finished_at=now())
    common.update(extra)
    return trial_rows(spec, common)


PARTITION_COLUMNS = ("scenario", "attack")


def to_part(table: pa.Table) -> pa.Table:
    """``table`` (of :data:`SCHEMA`) as a part file stores it: the partition columns
    dictionary-encoded (see the module docstring)."""
    for name in PARTITION_COLUMNS:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, pa.field(name, pa.dictionary(pa.int32(), pa.string())),
                                 table[name].cast(pa.string()).dictionary_encode())
    return table


def part_bytes(table: pa.Table) -> bytes:
    """``table`` (of :data:`SCHEMA`) as the bytes of a part file: :func:`to_part`'s layout,
    zstd, and a CRC of every data page, so that a flipped byte is an error when read (readers
    verify them: :func:`raypoison.store.results.read_part`) rather than a changed value."""
    buffer = io.BytesIO()
    pq.write_table(to_part(table), buffer, compression="zstd", write_page_checksum=True)
    return buffer.getvalue()


def is_part_layout(schema: pa.Schema) -> bool:
    """Whether a part file's schema stores the partition columns as :func:`to_part` does
    (parts written before 2026-12-04 hold plain strings; ``raypoison compact`` rewrites them)."""
    return all(name in schema.names and pa.types.is_dictionary(schema.field(name).type)
               for name in PARTITION_COLUMNS)


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    unknown = set().union(*(r.keys() for r in rows)) - COLUMNS if rows else set()
    if unknown:
        raise ValueError(f"row fields not in the schema: {sorted(unknown)}")
    return pa.Table.from_pylist(rows, schema=SCHEMA)
