"""Saved victims: every trained victim of a trial and the trial's poisons and trigger, kept in the
run's output (``execution.save_victims: true``) so that a defense added to the config later runs
on them without crafting or training anything, and a trial stopped after its victims trained
resumes at its defenses.

Layout, keyed like the rows (``OUTPUT/victims/``)::

    scenario=<scenario>/attack=<attack label>/<trial_id>/trial.pt     the poisons (uint8 images,
        base indices, labels), the trigger (or none), the trial id and index
    scenario=<scenario>/attack=<attack label>/<trial_id>/<victim>.pt  the victim's weights (the
        head alone in transfer mode, where the extractor is the scenario's frozen model), its
        training seed and its undefended row's fields
    scenario=<scenario>/attack=<attack label>/<trial_id>/<victim>.defense-<key>.pt  one finished
        defense's row fields on that victim (``key``: a digest of the defense's label and
        parameters), with its seed and a fingerprint of the victim it ran on

Victims are shared between scenarios that differ only in their defense-only fields
(:attr:`ScenarioConfig.DEFENSE_ONLY`, e.g. where the trusted set comes from) and their names: such
scenarios train the same victims, so a victim is saved under the id its trial has in the
scenario's *training twin* (the scenario with those fields at their defaults,
:meth:`ScenarioConfig.training_twin`), and a trial finds saved victims under its own scenario's
name first, then under every other scenario name in the folder, each time under its twin's id
there. A defense's saved fields are kept under the defense's label and parameters together with
the scenario's defense-only settings (:meth:`ScenarioConfig.defense_context`), so the variants'
defense results on one shared victim never stand in for each other. Scenarios with those fields at
their defaults keep the layout above exactly (their twin is themselves).

Files are written with ``torch.save`` and read back with ``torch.load(..., weights_only=True)``,
and each is checked against the trial, victim and seed it claims to belong to before use. A
victim is saved after its undefended evaluation and before its defenses run, and each defense's
fields as soon as that defense finishes: a run stopped in the middle of a victim's defenses loses
only the defense it was running. A defense's saved fields count only for the victim they were
computed on (the fingerprint of its undefended fields, which include its training time): a victim
trained again does not inherit them.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import torch

from raypoison.attacks.base import Poisons
from raypoison.config.specs import TrialSpec
from raypoison.config.suite import SAVED_TRIAL_FILE
from raypoison.core.identity import defense_key, digest, trial_id
from raypoison.core.registry import Component
from raypoison.data.triggers import BlendTrigger, PatchTrigger, Trigger, WarpTrigger
from raypoison.errors import DataError
from raypoison.models.base import ImageClassifier
from raypoison.store.storage import Location


def trigger_state(trigger: Trigger | None) -> dict[str, Any] | None:
    """A trigger as tensors and plain values (what ``weights_only`` loading admits)."""
    if trigger is None:
        return None
    if isinstance(trigger, PatchTrigger):
        return {"style": "patch", "pattern": trigger.pattern.cpu(), "corner": trigger.corner,
                "offset": trigger.offset, "at": list(trigger.at) if trigger.at else None,
                "opacity": trigger.opacity, "description": trigger.description}
    if isinstance(trigger, BlendTrigger):
        return {"style": "blend", "pattern": trigger.pattern.cpu(), "alpha": trigger.alpha,
                "description": trigger.description}
    if isinstance(trigger, WarpTrigger):
        return {"style": "warp", "grid": trigger.grid.cpu(), "description": trigger.description}
    raise TypeError(f"cannot save a trigger of type {type(trigger).__name__}")


def trigger_from_state(state: dict[str, Any] | None) -> Trigger | None:
    if state is None:
        return None
    if state["style"] == "patch":
        at = tuple(state["at"]) if state["at"] else None
        return PatchTrigger(state["pattern"], state["corner"], state["offset"],
                            state["description"], at=at,
                            opacity=float(state.get("opacity", 1.0)))  # saved before opacity: 1
    if state["style"] == "blend":
        return BlendTrigger(state["pattern"], state["alpha"], state["description"])
    return WarpTrigger(state["grid"], state["description"])


def _dump(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class VictimStore:
    """Saved victims under ``uri`` (a run's ``victims/`` folder, local or in an object store)."""

    def __init__(self, uri: str):
        self.location = Location.parse(uri)
        self._fingerprints: dict[str, str | None] = {}  # saved victim file -> its fingerprint

    def _folders(self, spec: TrialSpec) -> list[tuple[str, str, str]]:
        """Where ``spec``'s victims may be saved, in the order they are looked for: (scenario
        name, attack label, trial id of the files), its own scenario's first."""
        own = spec.scenario.name
        names = [own]
        for info in self.location.list_dirs(self.location.root):
            name = info.base_name.removeprefix("scenario=")
            if info.base_name.startswith("scenario=") and name != own:
                names.append(name)
        out = []
        for name in names:
            twin = spec.scenario.training_twin(name)
            out.append((name, spec.attack.label, trial_id(twin, spec.attack, spec.index)))
        if spec.trial_id != out[0][2]:  # saved before victims were shared: under its own id
            out.insert(1, (own, spec.attack.label, spec.trial_id))
        return out

    def _file(self, folder: tuple[str, str, str], name: str) -> str:
        scenario, attack, tid = folder
        return self.location.join(f"scenario={scenario}", f"attack={attack}", tid, f"{name}.pt")

    def _folder(self, spec: TrialSpec) -> tuple[str, str, str]:
        """The first folder that holds the trial and every victim of its scenario; else the one
        it saves into: its own scenario's, under its training twin's id."""
        folders = self._folders(spec)
        for folder in folders:
            if all(self.location.exists(self._file(folder, name))
                   for name in (SAVED_TRIAL_FILE, *spec.scenario.victims)):
                return folder
        return folders[0]

    def has(self, spec: TrialSpec) -> bool:
        """Whether the trial and every victim of its scenario are saved (by it, or by a scenario
        that trains the same victims)."""
        folder = self._folder(spec)
        return all(self.location.exists(self._file(folder, name))
                   for name in (SAVED_TRIAL_FILE, *spec.scenario.victims))

    def save_trial(self, spec: TrialSpec, poisons: Poisons, trigger: Trigger | None,
                   fields: dict[str, Any], crafted_on: tuple[str, ...] | None = None) -> None:
        """The trial's poisons and trigger, its row fields known after crafting, and the models
        it crafted on where they are not the scenario's attackers (they decide the rows'
        roles)."""
        folder = self._folders(spec)[0]  # a trial that trains saves into its own folder
        self.location.write_bytes(self._file(folder, SAVED_TRIAL_FILE), _dump({
            "trial_id": folder[2], "index": spec.index, "images": poisons.images.cpu(),
            "base_indices": list(poisons.base_indices), "labels": list(poisons.labels),
            "augment": poisons.augment,
            "target_index": poisons.target_index, "trigger": trigger_state(trigger),
            "fields": fields, "crafted_on": None if crafted_on is None else list(crafted_on)}))

    def save_victim(self, spec: TrialSpec, victim: str, model: ImageClassifier, *, head_only: bool,
                    seed_train: int, fields: dict[str, Any]) -> None:
        module = model.head if head_only else model
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        folder = self._folders(spec)[0]
        blob = {"trial_id": folder[2], "victim": victim, "seed_train": seed_train,
                "head_only": head_only, "state": state, "fields": fields}
        if head_only:  # the head means something only on top of the extractor it trained on
            blob["extractor"] = extractor_digest(model)
        path = self._file(folder, victim)
        self.location.write_bytes(path, _dump(blob))
        self._fingerprints[path] = fingerprint(fields)

    def _load(self, spec, name: str, missing_ok: bool = False,
              folder: tuple[str, str, str] | None = None) -> tuple[str, dict[str, Any] | None]:
        """The file ``name`` of ``folder`` (by default the trial's saved folder, resolved once)
        and its content, checked to be the folder's trial's; None for a missing file with
        ``missing_ok``."""
        folder = self._folder(spec) if folder is None else folder
        path = self._file(folder, name)
        if missing_ok and not self.location.exists(path):
            return path, None
        try:
            blob = torch.load(io.BytesIO(self.location.read_bytes(path)), weights_only=True)
        except Exception as err:
            raise DataError(f"{path}: not a readable saved victim ({type(err).__name__}: "
                            f"{str(err)[:200]})") from None
        if not isinstance(blob, dict) or blob.get("trial_id") != folder[2]:
            raise DataError(f"{path}: saved for another trial, not {folder[2]}")
        return path, blob

    def load_trial(self, spec: TrialSpec, device: str | torch.device
                   ) -> tuple[Poisons, Trigger | None, dict[str, Any], tuple[str, ...] | None]:
        """The poisons, trigger, saved row fields and crafting models of :meth:`save_trial`."""
        path, blob = self._load(spec, SAVED_TRIAL_FILE)
        assert blob is not None
        if blob.get("index") != spec.index:
            raise DataError(f"{path}: saved for trial {blob.get('index')}, "
                            f"not {spec.index}")
        poisons = Poisons(blob["images"].to(device), tuple(blob["base_indices"]),
                          tuple(blob["labels"]), int(blob["target_index"]),
                          augment=bool(blob.get("augment", True)))
        crafted_on = blob.get("crafted_on")
        return (poisons, trigger_from_state(blob["trigger"]), dict(blob["fields"]),
                None if crafted_on is None else tuple(crafted_on))

    def _victim_blob(self, spec: TrialSpec, victim: str, seed_train: int,
                     missing_ok: bool = False) -> dict[str, Any] | None:
        path, blob = self._load(spec, victim, missing_ok)
        if blob is None:
            return None
        if blob.get("victim") != victim or blob.get("seed_train") != seed_train:
            raise DataError(f"{path}: saved for victim "
                            f"{blob.get('victim')} with seed {blob.get('seed_train')}, not "
                            f"{victim} with {seed_train}")
        return blob

    def load_victim(self, spec: TrialSpec, victim: str, model: ImageClassifier, seed_train: int
                    ) -> dict[str, Any]:
        """Load the saved weights into ``model`` (a fresh victim built with ``seed_train``);
        returns the undefended row's fields."""
        blob = self._victim_blob(spec, victim, seed_train)
        assert blob is not None
        saved_on = blob.get("extractor") if blob["head_only"] else None  # None: saved before
        if saved_on is not None and saved_on != extractor_digest(model):
            raise DataError(
                f"{self._file(self._folder(spec), victim)}: this head was trained on another "
                f"{victim} extractor than this run's (its pre-trained weights differ: pre-trained "
                "again, or another checkpoint); the saved victim would be a model nobody "
                "evaluated. Restore the run's models/ folder, or delete this trial's saved folder "
                "so that it trains again")
        module = model.head if blob["head_only"] else model
        module.load_state_dict(blob["state"])
        return dict(blob["fields"])

    def victim_fields(self, spec: TrialSpec, victim: str, seed_train: int
                      ) -> dict[str, Any] | None:
        """The saved victim's undefended row fields without its weights, or None if the victim
        is not saved (yet)."""
        blob = self._victim_blob(spec, victim, seed_train, missing_ok=True)
        return None if blob is None else dict(blob["fields"])

    def _victim_folder(self, spec: TrialSpec, victim: str, victim_fields: dict[str, Any]
                       ) -> tuple[str, str, str]:
        """The folder whose saved ``victim`` is the one with these undefended fields: where its
        defenses' fields are kept. A trial that trains again while a twin scenario's folder is
        complete saves its victims into its own folder, and their defenses belong beside them,
        not in the folder :meth:`_folder` would pick before its own is complete; the trial's
        folder when no saved victim matches."""
        wanted = fingerprint(victim_fields)
        for folder in self._folders(spec):
            if self._fingerprint_of(spec, folder, victim) == wanted:
                return folder
        return self._folder(spec)

    def _fingerprint_of(self, spec: TrialSpec, folder: tuple[str, str, str], victim: str
                        ) -> str | None:
        """The fingerprint of the victim saved in ``folder`` (read once per store, as the whole
        model is), or None where none is saved or its file cannot be read (a damaged file in a
        twin's folder is not this trial's concern)."""
        path = self._file(folder, victim)
        if path not in self._fingerprints:
            try:
                _, blob = self._load(spec, victim, missing_ok=True, folder=folder)
            except DataError:
                blob = None
            self._fingerprints[path] = (None if blob is None
                                        else fingerprint(dict(blob.get("fields", {}))))
        return self._fingerprints[path]

    def _defense_name(self, spec: TrialSpec, victim: str, defense: Component) -> str:
        context = spec.scenario.defense_context()
        key = [*defense_key(defense), context] if context else defense_key(defense)
        return f"{victim}.defense-{digest(key, 12)}"

    def save_defense(self, spec: TrialSpec, victim: str, defense: Component, seed: int,
                     victim_fields: dict[str, Any], fields: dict[str, Any]) -> None:
        """One finished defense's row fields on ``victim`` (whose undefended fields are
        ``victim_fields``), beside that very victim's file."""
        folder = self._victim_folder(spec, victim, victim_fields)
        self.location.write_bytes(self._file(folder, self._defense_name(spec, victim, defense)), _dump({
            "trial_id": folder[2], "victim": victim, "defense": list(defense_key(defense)),
            "context": spec.scenario.defense_context(),
            "seed": seed, "victim_fingerprint": fingerprint(victim_fields),
            "fields": dict(fields)}))

    def load_defense(self, spec: TrialSpec, victim: str, defense: Component, seed: int,
                     victim_fields: dict[str, Any]) -> dict[str, Any] | None:
        """The fields :meth:`save_defense` kept for this defense on this very victim, or None
        (never run, or run on a victim since trained again)."""
        path, blob = self._load(spec, self._defense_name(spec, victim, defense), missing_ok=True,
                                folder=self._victim_folder(spec, victim, victim_fields))
        if blob is None:
            return None
        context = spec.scenario.defense_context()
        if (blob.get("victim"), blob.get("defense"), blob.get("seed"),
                blob.get("context", {})) != (victim, list(defense_key(defense)), seed, context):
            raise DataError(f"{path}: saved for {blob.get('defense')} on "
                            f"victim {blob.get('victim')} with seed {blob.get('seed')}"
                            f"{_under(blob.get('context', {}))}, not {defense.label} on "
                            f"{victim} with {seed}{_under(context)}")
        if blob.get("victim_fingerprint") != fingerprint(victim_fields):
            return None
        return dict(blob["fields"])


def _under(context: dict[str, Any]) -> str:
    return f" under {context}" if context else ""


def extractor_digest(model: ImageClassifier) -> str:
    """A digest of a model's weights outside its head: what a transfer victim's saved head was
    trained on top of."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("head."):
            continue
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return hasher.hexdigest()[:16]


def fingerprint(victim_fields: dict[str, Any]) -> str:
    """What tells one trained victim from another: a digest of its undefended row's fields."""
    return digest({k: v for k, v in victim_fields.items() if k != "defenses"})
