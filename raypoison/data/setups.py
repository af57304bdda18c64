"""Trial setups: which target, which classes, which bases.

A setup comes either from the seeded sampler (a pure function of the scenario seed, the trial
index and the data set's labels) or from a setups file: the reference pickles published with the
benchmark (read through the restricted unpickler) or this project's JSON export.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from raypoison.core.safe_pickle import restricted_load_file
from raypoison.errors import DataError

REFERENCE_KEYS = ("target class", "target index", "base class", "base indices")


@dataclass(frozen=True)
class Setup:
    target_class: int
    target_index: int
    base_class: int
    base_indices: tuple[int, ...]


def sample_setup(
    train_labels: np.ndarray, test_labels: np.ndarray, *, budget: int, seed: int, index: int,
    exclude: np.ndarray | None = None,
) -> Setup:
    """The seeded sampler: target class != base class, a test target, ``budget`` distinct bases
    (none of them in ``exclude``, the trusted set's indices)."""
    rng = np.random.default_rng([seed & (2**63 - 1), index])
    classes = np.unique(train_labels)
    target_class = int(rng.choice(classes))
    base_class = int(rng.choice(classes[classes != target_class]))
    target_index = int(rng.choice(np.flatnonzero(test_labels == target_class)))
    pool = np.flatnonzero(train_labels == base_class)
    if exclude is not None and len(exclude):
        pool = np.setdiff1d(pool, exclude)
    if len(pool) < budget:
        raise ValueError(f"class {base_class} has {len(pool)} training images, budget is {budget}")
    bases = np.sort(rng.choice(pool, size=budget, replace=False))
    return Setup(target_class, target_index, base_class, tuple(int(i) for i in bases))


def clean_training_indices(
    train_labels: np.ndarray, setup: Setup, per_class: int | None, *,
    random_seed: int | None = None, held_out: np.ndarray | None = None,
) -> np.ndarray:
    """The clean part of the victim's training set, in data set order.

    As in the benchmark: the first ``per_class`` non-base images of each class, and for the base
    class ``per_class - budget`` of them, so that with the poisons every class has ``per_class``.
    With ``random_seed``: that many images drawn at random instead (the seeded-subset option).
    With ``per_class`` None: every non-base training image (the from-scratch construction).
    ``held_out`` indices (the defenders' trusted set) are never chosen.
    """
    rng = np.random.default_rng(random_seed) if random_seed is not None else None
    is_base = np.zeros(len(train_labels), dtype=bool)
    is_base[list(setup.base_indices)] = True
    if held_out is not None:
        is_base[held_out] = True
    keep = []
    for c in np.unique(train_labels):
        candidates = np.flatnonzero((train_labels == c) & ~is_base)
        if per_class is not None:
            n = per_class - (len(setup.base_indices) if c == setup.base_class else 0)
            if rng is not None:
                candidates = np.sort(rng.choice(candidates, size=n, replace=False))
            else:
                candidates = candidates[:n]
        keep.append(candidates)
    return np.sort(np.concatenate(keep))


def _whole(value: object, where: str, what: str) -> int:
    """A non-negative whole number as a setups file stores it (a Python or NumPy integer, or a
    float with no fraction); anything else would be cut silently (100.9 read as 100)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise DataError(f"{where}: {what} must be a whole number, found {str(value)[:40]!r}")
    if not float(value).is_integer() or value < 0:
        raise DataError(f"{where}: {what} must be a whole number ≥ 0, found {value}")
    return int(value)


def _checked(target_class: object, target_index: object, base_class: object, bases: object,
             where: str) -> Setup:
    """A setup whose values mean what the trial assumes: whole numbers, and a base class other
    than the target class (else a correct prediction would count as attack success).

    A base may be listed twice: the reference's CIFAR-10 transfer file does so (entry 78 lists
    image 5259 twice). Its code then crafts two poisons from that image and trains on both, with
    the base class's clean images cut by the full budget; :func:`clean_training_indices` and the
    trial do the same."""
    values = np.asarray(bases, dtype=object).ravel() if not isinstance(bases, list | tuple) \
        else list(bases)
    indices = tuple(_whole(v, where, f"base index {i}") for i, v in enumerate(values))
    setup = Setup(_whole(target_class, where, "the target class"),
                  _whole(target_index, where, "the target index"),
                  _whole(base_class, where, "the base class"), indices)
    if setup.target_class == setup.base_class:
        raise DataError(f"{where}: the base class is the target class ({setup.base_class}); a "
                        "clean-label attack needs two classes")
    return setup


def _from_reference(entry: object, where: str) -> Setup:
    if not isinstance(entry, dict) or any(k not in entry for k in REFERENCE_KEYS):
        raise DataError(f"{where}: expected a dict with keys {list(REFERENCE_KEYS)}")
    return _checked(entry["target class"], entry["target index"], entry["base class"],
                    entry["base indices"], where)


def load_setups(path: str | Path) -> list[Setup]:
    """Read a setups file: a reference ``.pickle`` (restricted unpickler) or a ``.json`` export.
    Each entry is checked for what can be checked without the data set (see :func:`_checked`);
    :meth:`TrialContext.setup` checks it against the data."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            entries = json.loads(path.read_text())
            if not isinstance(entries, list):
                raise TypeError(f"expected a list of setups, got {type(entries).__name__}")
            fields = [(e["target_class"], e["target_index"], e["base_class"], e["base_indices"])
                      for e in entries]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a setups JSON file ({err})") from None
        return [_checked(*f, f"{path}[{i}]") for i, f in enumerate(fields)]
    entries = restricted_load_file(path)
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a list of setups, got {type(entries).__name__}")
    return [_from_reference(e, f"{path}[{i}]") for i, e in enumerate(entries)]


def save_setups(setups: list[Setup], path: str | Path) -> None:
    """Write ``.json`` (this project's format) or ``.pickle`` (the reference format)."""
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps([asdict(s) for s in setups], indent=1))
        return
    entries = [{"target class": s.target_class, "target index": np.int64(s.target_index),
                "base class": s.base_class,
                "base indices": np.asarray(s.base_indices, dtype=np.int64)} for s in setups]
    path.write_bytes(pickle.dumps(entries, protocol=4))
