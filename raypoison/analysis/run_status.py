"""Where the runs of a results dataset stand, from their manifests and the rows written so far.

Every run writes ``manifests/run-<id>.json`` when it starts and again when it ends. A manifest
still saying ``running`` is either a run in progress or one whose driver died; on the machine that
wrote it, the recorded process id tells them apart (``stopped``), elsewhere it stays ``running``.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import warnings
from collections.abc import Iterable
from typing import Any

import pandas as pd

from raypoison.store.storage import Location


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # gone, or no process id at all
        return False
    except PermissionError:
        return True
    return True


def manifests(uri: str) -> list[dict[str, Any]]:
    location = Location.parse(uri)
    out: list[dict[str, Any]] = []
    root = location.join("manifests")
    if not location.exists(root):
        return out
    for info in location.list_files(root):
        if not posixpath.basename(info.path).endswith(".json"):
            continue
        try:
            manifest = json.loads(location.read_bytes(info.path))
        except (OSError, ValueError) as err:  # manifests are replaced whole: this one is damaged
            warnings.warn(f"skipping {info.path}: not a readable manifest "
                          f"({type(err).__name__}: {str(err)[:120]})", UserWarning, stacklevel=2)
            continue
        if not isinstance(manifest, dict):
            warnings.warn(f"skipping {info.path}: a manifest is a JSON object, this is a "
                          f"{type(manifest).__name__}", UserWarning, stacklevel=2)
            continue
        out.append(_well_typed(manifest, info.path))
    return sorted(out, key=lambda m: m.get("started_at") or "")


# the manifest fields the status reads, with the type each must have to be used
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "suite": str, "status": str, "started_at": str, "host": str, "pid": int,
    "trials": dict, "models": list}
_COUNTS = ("planned", "skipped_already_done")


def _well_typed(manifest: dict[str, Any], path: str) -> dict[str, Any]:
    """``manifest`` without the fields the status reads whose type is wrong (a hand-edited or
    foreign file), each named in a warning: such a field reads as missing, not as a crash."""
    wrong = [k for k, t in _FIELDS.items() if k in manifest and manifest[k] is not None
             and (not isinstance(manifest[k], t) or isinstance(manifest[k], bool))]
    clean = {k: v for k, v in manifest.items() if k not in wrong}
    trials = clean.get("trials")
    if isinstance(trials, dict):
        bad = [k for k in _COUNTS if k in trials and (not isinstance(trials[k], int)
                                                     or isinstance(trials[k], bool))]
        if bad:
            clean["trials"] = {k: v for k, v in trials.items() if k not in bad}
            wrong += [f"trials.{k}" for k in bad]
    if wrong:
        warnings.warn(f"{path}: ignoring {', '.join(wrong)} (not of the type a manifest "
                      "writes)", UserWarning, stacklevel=3)
    return clean


def run_table(runs: list[dict[str, Any]], df: pd.DataFrame) -> pd.DataFrame:
    """One row per run of ``runs`` (manifests, from :func:`manifests`): its status, the trials
    it planned, skipped as done and had to compute, and how many it has written so far (ok,
    failed, rejected: a trial counts by its worst row; a trial whose rows a later run rewrote
    counts for the later run)."""
    rows = []
    for m in runs:
        status = m.get("status", "?")
        if status == "running" and m.get("host") == socket.gethostname() and m.get("pid") \
                and not _alive(int(m["pid"])):
            status = "stopped"
        mine = df[df["run_id"] == m.get("run_id")] if "run_id" in df.columns else df.iloc[0:0]
        per_trial = (mine.groupby("trial_id")["status"].agg(
            lambda s: "failed" if (s == "failed").any() else
            "rejected" if (s == "rejected").any() else "ok") if not mine.empty
            else pd.Series(dtype=str))
        trials = m.get("trials", {})
        planned, skipped = trials.get("planned"), trials.get("skipped_already_done", 0)
        rows.append({"run_id": m.get("run_id"), "suite": m.get("suite"), "status": status,
                     "started_at": m.get("started_at"), "planned": planned, "skipped": skipped,
                     "to_compute": None if planned is None else planned - skipped,
                     "written": len(per_trial), "ok": int((per_trial == "ok").sum()),
                     "failed": int((per_trial == "failed").sum()),
                     "rejected": int((per_trial == "rejected").sum())})
    return pd.DataFrame(rows)


def weight_conflicts(manifests: Iterable[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """Pre-trained models (by their ``models/`` file name) that runs of one output recorded with
    different SHA-256 digests (``manifest["models"]``), as {file: {digest: run ids}}: rows of
    those runs were computed with different weights under the same trial ids and do not pool.
    Checkpoint files are left out: their content is in the trial ids, so other weights are other
    trials."""
    seen: dict[str, dict[str, list[str]]] = {}
    for m in manifests:
        for w in m.get("models") or ():
            if not isinstance(w, dict) or w.get("source") not in ("cached", "pretrained"):
                continue
            runs = seen.setdefault(str(w.get("file")), {}).setdefault(str(w.get("sha256")), [])
            if str(m.get("run_id")) not in runs:
                runs.append(str(m.get("run_id")))
    return {f: d for f, d in sorted(seen.items()) if len(d) > 1}


def conflict_text(file: str, by_digest: dict[str, list[str]]) -> str:
    parts = "; ".join(f"sha256 {d[:12]} in run {', '.join(r)}" for d, r in by_digest.items())
    return (f"{file} was not the same model in every run ({parts}): rows of these runs come from "
            f"different weights under the same trial ids and should not be pooled")


def to_text(table: pd.DataFrame) -> str:
    lines = []
    for r in table.itertuples(index=False):
        share = f" ({100 * r.written / r.to_compute:.0f}%)" if r.to_compute else ""
        lines.append(f"run {r.run_id} [{r.status}], suite {r.suite}: wrote {r.written} of the "
                     f"{r.to_compute} trials it had to compute{share} ({r.planned} planned, "
                     f"{r.skipped} already done); ok {r.ok}, failed {r.failed}, "
                     f"rejected {r.rejected}")
    return "\n".join(lines)
