"""The defense phase of a trial: every defense of the suite on one trained victim, scored.

Plain PyTorch like the rest of a trial. A defense sees the model, the trusted set and (data-side)
the training set; it never sees the trigger or which samples are poisons: those only score it.
One defense's error fails that defense's row, not the trial.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from raypoison.analysis.stats import roc_auc
from raypoison.core.registry import Component
from raypoison.data import ImageData
from raypoison.data.setups import Setup
from raypoison.data.triggers import Trigger
from raypoison.defenses import TrainingSet, TrustedSet, create_defense
from raypoison.models import ImageClassifier
from raypoison.store.rows import STATUS_FAILED, Fields, describe_error
from raypoison.trial.evaluate import evaluate_victim


def run_defenses(defenses: tuple[Component, ...], model: ImageClassifier, *, data: ImageData,
                 setup: Setup, trigger: Trigger | None, trusted: TrustedSet,
                 training: TrainingSet, is_poison: torch.Tensor, seeds: list[int],
                 asr_scope: str,
                 finished: Callable[[Component, int, Fields], None] | None = None
                 ) -> dict[str, Fields]:
    """Each defense's row fields, by label; ``finished(defense, seed, fields)`` is called as each
    one ends (to keep it before the next begins)."""
    out = {}
    for defense, seed in zip(defenses, seeds, strict=True):
        tick = time.perf_counter()
        try:
            fields = Fields(_one(create_defense(defense), model, data=data, setup=setup,
                                 trigger=trigger, trusted=trusted, training=training,
                                 is_poison=is_poison, seed=seed, asr_scope=asr_scope))
        except Exception as err:  # one defense's failure (a bad field too) is that defense's row
            fields = Fields(status=STATUS_FAILED,
                            error=describe_error(err, f"defense {defense.label}"))
        fields.update(trusted_size=len(trusted), seconds_defense=time.perf_counter() - tick)
        out[defense.label] = fields
        if finished is not None:
            finished(defense, seed, fields)
    return out


def _one(defense, model, *, data, setup, trigger, trusted, training, is_poison, seed,
         asr_scope) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    model.eval()
    score = defense.detect(model, trusted, seed)
    if score is not None:
        fields["detection_score"] = float(score)
    repaired = defense.repair(model, trusted, seed)
    if repaired is not None:
        outcome = evaluate_victim(repaired.eval(), data, setup, trigger=trigger,
                                  asr_scope=asr_scope)
        fields.update(clean_accuracy_repaired=outcome.clean_accuracy,
                      attack_success_rate_repaired=outcome.attack_success_rate,
                      target_pred_repaired=outcome.target_pred,
                      success_repaired=outcome.success)
    # the samples in a seeded random order: the poisons' place in the training set tells nothing
    order = torch.randperm(len(training.labels), generator=torch.Generator().manual_seed(seed))
    shuffled = TrainingSet(training.images[order.to(training.images.device)],
                           training.labels[order.to(training.labels.device)])
    flags = defense.flag(shuffled, model, trusted, seed)
    if flags is not None:
        fields.update(flag_scores(flags.scores, flags.flagged, is_poison.cpu()[order]))
    return fields


def flag_scores(scores: torch.Tensor, flagged: torch.Tensor, is_poison: torch.Tensor
                ) -> dict[str, Any]:
    """How well flags find the poisons: precision and recall of the flagged set and the ROC AUC
    of the scores; None where undefined (no poisons to find, or nothing flagged)."""
    flagged, is_poison = flagged.bool().cpu(), is_poison.bool().cpu()
    hits = int((flagged & is_poison).sum())
    n_flagged, n_poison = int(flagged.sum()), int(is_poison.sum())
    values = scores.detach().float().cpu().numpy()
    mask = is_poison.numpy()
    return {
        "flagged": n_flagged,
        "flag_precision": hits / n_flagged if n_flagged and n_poison else None,
        "flag_recall": hits / n_poison if n_poison else None,
        "flag_auc": roc_auc(values[mask], values[~mask]) if n_poison else None,
    }
