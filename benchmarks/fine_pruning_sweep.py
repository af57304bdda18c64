"""Fine-pruning's sweep, both ways: the whole model over the trusted set at every step (as the
defense ran until 2026-12-07) against the head over features computed once
(:meth:`raypoison.defenses.tuning.FinePruning.prune`). Prints the seconds of each and whether
they chose the same mask.

    .venv/bin/python benchmarks/fine_pruning_sweep.py                 # quarter-width ResNet-18
    .venv/bin/python benchmarks/fine_pruning_sweep.py --width 64      # full width

Random weights and images; the labels are the model's own predictions, so that accuracy falls
as channels go and ``--max-drop`` decides where the sweep stops (at 1.0 it never does).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raypoison.defenses import TrustedSet  # noqa: E402
from raypoison.defenses.tuning import ChannelMask, FinePruning  # noqa: E402
from raypoison.models import ImageClassifier, build_model  # noqa: E402
from raypoison.training.loop import accuracy, predict  # noqa: E402


def whole_model_mask(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor,
                     max_drop: float, max_ratio: float) -> torch.Tensor:
    """The sweep as it ran before: every step runs the masked model over the trusted set."""
    pruned = copy.deepcopy(model)
    activity = torch.cat([pruned.features(images[i:i + 512].float() / 255)
                          for i in range(0, len(images), 512)]).mean(0)
    order = torch.argsort(activity)
    baseline = accuracy(pruned, images, labels)
    mask = ChannelMask(torch.ones_like(activity))
    pruned.extractor = torch.nn.Sequential(pruned.extractor, mask)
    step, chosen = max(1, len(order) // 50), 0
    for k in range(step, int(max_ratio * len(order)) + 1, step):
        mask.keep.fill_(1.0)
        mask.keep[order[:k]] = 0.0
        if accuracy(pruned, images, labels) < baseline - max_drop:
            break
        chosen = k
    mask.keep.fill_(1.0)
    mask.keep[order[:chosen]] = 0.0
    return mask.keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width (64: full)")
    parser.add_argument("--images", type=int, default=500, help="trusted images (default 500)")
    parser.add_argument("--max-drop", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("resnet18", 10, (0.5,) * 3, (0.25,) * 3, 32, {"width": args.width}).eval()
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    labels = predict(model, images)
    params = FinePruning.Params(max_drop=args.max_drop)

    tick = time.perf_counter()
    before = whole_model_mask(model, images, labels, params.max_drop, params.max_ratio)
    whole = time.perf_counter() - tick
    tick = time.perf_counter()
    pruned = FinePruning(params).prune(model, TrustedSet(images, labels))
    once = time.perf_counter() - tick
    after = pruned.extractor[1].keep  # type: ignore[index]  # (extractor, mask) after pruning
    print(f"ResNet-18 width {args.width}, {args.images} images, max_drop {args.max_drop}, "
          f"{args.threads} thread(s): {int((after == 0).sum())} of {len(after)} channels pruned")
    print(f"whole model at every step: {whole:.2f} s")
    print(f"features once, head per step: {once:.2f} s ({whole / once:.0f}x)")
    print(f"same mask: {torch.equal(before, after)}")


if __name__ == "__main__":
    main()
