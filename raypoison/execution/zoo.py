"""``raypoison pretrain``: the victim zoo as Ray tasks, one per (model, seed).

Each checkpoint is written atomically as ``<output>/<name>-s<seed>.pt``; ``<output>/zoo.json``
lists them with their clean (and, for adversarial training, robust) test accuracy. Checkpoints that
exist are kept, so running the command again trains only what is missing.
"""

from __future__ import annotations

import json
import logging

import ray

from raypoison.config.suite import ZooConfig
from raypoison.core.schema import to_plain
from raypoison.execution.checkpoints import pretrain_task
from raypoison.execution.cluster import ray_session
from raypoison.models import load_checkpoint
from raypoison.store.storage import Location

log = logging.getLogger("raypoison")


def pretrain_zoo(zoo: ZooConfig, output: str, *, address: str | None = None,
                 num_cpus: int | None = None, num_gpus: float | None = None) -> list[dict]:
    location = Location.parse(output)
    index_path = location.join("zoo.json")
    index = json.loads(location.read_bytes(index_path)) if location.exists(index_path) else {}
    jobs = [(entry, seed) for entry in zoo.models for seed in entry.seeds
            if not location.exists(location.join(entry.file_name(seed)))]
    log.info("zoo %s: %d checkpoints to train, %d present", zoo.name, len(jobs),
             sum(len(e.seeds) for e in zoo.models) - len(jobs))
    if jobs:
        with ray_session(address, num_cpus=num_cpus, num_gpus=num_gpus):
            task = ray.remote(pretrain_task).options(
                num_cpus=zoo.cpus_per_task, num_gpus=zoo.gpus_per_task, max_retries=2)
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
                    "name": entry.name, "arch": entry.arch, "seed": seed,
                    "params": to_plain(entry.params), "dataset": to_plain(entry.dataset),
                    "recipe": to_plain(entry.recipe),
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
