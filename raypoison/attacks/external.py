"""Poisons crafted elsewhere: trial ``i`` reads ``<root>/<i>/`` in the reference trial-folder
format. They go through the same checks as the project's own poisons (count, labels, indices,
target image, ε), and the target's label must be the setup's target class, so a folder made for
another setup or outside the budget is rejected with the reason, never trained on. ε allows one
uint8 step of slack, as the reference's own check does (9/255 for 8/255: its PIL conversion
truncates), and a row whose poisons use it says so in ``poison_check``. A backdoor folder's
patch (``target.pickle``'s 4-tuple) becomes the trial's trigger, pasted on the target at its
stored position at test time. Poisons given as the setup's (poison, index) pairs in another
order are put in the setup's order, as the reference evaluator accepts any order."""

from __future__ import annotations

from dataclasses import dataclass, field

from raypoison.attacks.base import Attack, CraftResult, Poisons
from raypoison.attacks.context import CraftingContext
from raypoison.attacks.registry import ATTACKS
from raypoison.core.schema import parse_path
from raypoison.data.setups import Setup
from raypoison.errors import DataError
from raypoison.formats.trial_folder import read_trial_folder


@ATTACKS.register("external")
class External(Attack):
    uses_attacker = False  # the poisons come from files
    rounding_slack = 1

    @dataclass(frozen=True)
    class Params:
        root: str = field(metadata={"parse": parse_path})

    def craft(self, ctx: CraftingContext, setup: Setup, seed: int, index: int) -> CraftResult:
        where = f"{self.params.root}/{index}"
        folder = read_trial_folder(where)
        if folder.target_label != setup.target_class:
            raise DataError(f"{where}/target.pickle: its target is labelled {folder.target_label}"
                            f", but trial {index}'s target (test image {setup.target_index}) is "
                            f"of class {setup.target_class}: a folder made for another setup")
        images, indices, labels = folder.images, folder.base_indices, folder.labels
        wanted = tuple(setup.base_indices)
        if indices != wanted and len(set(indices)) == len(indices) and set(indices) == set(wanted):
            position = {i: k for k, i in enumerate(indices)}
            order = [position[i] for i in wanted]
            images, indices = images[order], wanted
            labels = tuple(labels[k] for k in order)
        poisons = Poisons(images.to(ctx.device), indices, labels, setup.target_index,
                          target_image=folder.target_image.to(ctx.device))
        return CraftResult(poisons, trigger=folder.trigger())
