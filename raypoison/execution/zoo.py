"""``raypoison pretrain``: the victim zoo as Ray tasks, one per (model, seed).

Each checkpoint is written atomically as ``<output>/<name>-s<seed>.pt``; ``<output>/zoo.json``
lists them with their clean (and, for adversarial training, robust) test accuracy. Checkpoints that
exist are kept, so running the command again trains only what is missing; a checkpoint is kept
only if ``zoo.json`` says it was trained from the config's very entry and the file reads as a
checkpoint of that architecture (else the command stops and says which file and what differs).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import ray

from raypoison.config.suite import ZooConfig, ZooEntry
from raypoison.core.identity import digest, identity_of
from raypoison.core.schema import to_plain
from raypoison.errors import ConfigError, DataError
from raypoison.execution.checkpoints import pretrain_task
from raypoison.execution.cluster import ray_session
from raypoison.models import load_checkpoint
from raypoison.store.storage import Location

log = logging.getLogger("raypoison")


def _describe(entry: ZooEntry, seed: int) -> dict[str, Any]:
    """A checkpoint's index entry: what it is, as written in the config, and ``identity``, the
    digests that decide whether a present checkpoint is the config's entry (the forms trial ids
    use: defaults left out, so a new option keeps them; data paths replaced by a digest of the
    files, so moving the data keeps them)."""
    return {"name": entry.name, "arch": entry.arch, "seed": seed,
            "params": to_plain(entry.params), "dataset": to_plain(entry.dataset),
            "recipe": to_plain(entry.recipe),
            "identity": {"params": digest(identity_of(entry.params)),
                         "dataset": digest(identity_of(entry.dataset)),
                         "recipe": digest(identity_of(entry.recipe))}}


def _read_index(location: Location, index_path: str) -> dict[str, Any]:
    if not location.exists(index_path):
        return {}
    try:
        index = json.loads(location.read_bytes(index_path))
    except (OSError, ValueError) as err:
        raise DataError(f"{index_path}: not a readable zoo index ({type(err).__name__}: "
                        f"{str(err)[:120]}); restore it, or delete it and the checkpoints it "
                        "listed to train them again") from None
    if not isinstance(index, dict):
        raise DataError(f"{index_path}: a zoo index is a JSON object (file name -> entry)")
    return index


def _check_present(location: Location, index: dict[str, Any], index_path: str,
                   entry: ZooEntry, seed: int) -> None:
    """A checkpoint already in the output is kept only if the index says it was trained from
    this very entry: reused by file name alone, a changed entry (another architecture, recipe
    or data) would keep the old weights under the new description. The file is read too
    (each invocation; a download per checkpoint on object storage), so a damaged one is trained
    again rather than reported as trained."""
    name = entry.file_name(seed)
    recorded = index.get(name)
    if not isinstance(recorded, dict):
        raise DataError(f"{location.join(name)} exists but {index_path} does not describe it: "
                        "restore the index, or delete the checkpoint to train it again")
    wanted = _describe(entry, seed)
    differs = [k for k in ("arch", "seed") if recorded.get(k) != wanted[k]]
    identity = recorded.get("identity")
    if isinstance(identity, dict):
        differs += [k for k, v in wanted["identity"].items() if identity.get(k) != v]
    else:  # an index written before identities were recorded: architecture and seed only
        log.info("%s: its index entry predates recorded identities; kept on its architecture "
                 "and seed", name)
    if differs:
        shown = "; ".join(f"{k}: {str(recorded.get(k))[:60]} in the index, "
                          f"{str(wanted[k])[:60]} in the config" for k in differs)
        raise DataError(f"{location.join(name)} was trained from another zoo entry ({shown}): "
                        "delete it to train it again, or write the zoo to another --output")
    for key in ("clean_accuracy", "robust_accuracy"):
        value = recorded.get(key)
        if (key == "clean_accuracy" or value is not None) and (
                isinstance(value, bool) or not isinstance(value, int | float)):
            raise DataError(f"{index_path}: the entry of {name} has {key} "
                            f"{str(value)[:40]!r}, not a number: restore the index, or delete "
                            "the checkpoint to train it again")
    try:  # the index describes the file; whether the file is what it describes is read here
        model, _ = load_checkpoint(location.read_bytes(location.join(name)),
                                   where=location.join(name))
    except DataError as err:
        raise DataError(f"{err}; delete it to train it again") from None
    if model.name != entry.arch:
        raise DataError(f"{location.join(name)} holds a {model.name}, its index entry and the "
                        f"config a {entry.arch}: delete it to train it again")


def pretrain_zoo(zoo: ZooConfig, output: str, *, address: str | None = None,
                 num_cpus: int | None = None, num_gpus: float | None = None) -> list[dict]:
    location = Location.parse(output)
    if location.is_local and os.path.exists(location.root) and not os.path.isdir(location.root):
        raise ConfigError("--output", f"{output} is a file, not a folder")
    index_path = location.join("zoo.json")
    index = _read_index(location, index_path)
    jobs = []
    for entry in zoo.models:
        for seed in entry.seeds:
            if location.exists(location.join(entry.file_name(seed))):
                _check_present(location, index, index_path, entry, seed)
            else:
                jobs.append((entry, seed))
    log.info("zoo %s: %d checkpoints to train, %d present", zoo.name, len(jobs),
             sum(len(e.seeds) for e in zoo.models) - len(jobs))
    if jobs:
        with ray_session(address, num_cpus=num_cpus, num_gpus=num_gpus) as session:
            gpus = zoo.gpus_per_task
            if session.mode == "embedded" and gpus > 0 and not session.resources.get("GPU"):
                log.info("no GPUs in the local Ray instance: the zoo trains on the CPU")
                gpus = 0.0  # else the tasks wait for a GPU forever
            cpus = zoo.cpus_per_task
            if session.mode == "embedded":
                cpus = min(cpus, session.resources.get("CPU", cpus))
            task = ray.remote(pretrain_task).options(
                num_cpus=cpus, num_gpus=gpus, max_retries=2)
            refs = {task.remote(entry.model_config(seed), entry.dataset): (entry, seed)
                    for entry, seed in jobs}
            pending = list(refs)
            while pending:
                (ready,), pending = ray.wait(pending, num_returns=1)
                entry, seed = refs[ready]
                blob = ray.get(ready)
                _, meta = load_checkpoint(blob, where=entry.file_name(seed))
                location.write_bytes(location.join(entry.file_name(seed)), blob)
                index[entry.file_name(seed)] = {
                    **_describe(entry, seed),
                    "clean_accuracy": meta.get("clean_accuracy"),
                    "robust_accuracy": meta.get("robust_accuracy"),
                    "train_seconds": meta.get("train_seconds"),
                }
                log.info("trained %s: clean accuracy %.3f%s", entry.file_name(seed),
                         meta["clean_accuracy"],
                         f", robust accuracy {meta['robust_accuracy']:.3f}"
                         if "robust_accuracy" in meta else "")
                location.write_bytes(index_path, json.dumps(index, indent=2).encode())
    return [index[e.file_name(s)] for e in zoo.models for s in e.seeds]
