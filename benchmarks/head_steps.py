"""Milliseconds per step of a transfer head trained on a feature bank (the transfer trials' inner
loop): a bank of ``--pool`` random features under every view, ``--poisons`` images whose
features the frozen extractor computes when a batch draws them, a 40-epoch-style head at batch
64. Run it from two checkouts to compare two versions of the lookup on one machine; on a GPU
(``--device cuda``) it shows what the host's waits for the device cost a step.

    .venv/bin/python benchmarks/head_steps.py --threads 1
    .venv/bin/python benchmarks/head_steps.py --device cuda --arch resnet18 --width 64
"""

from __future__ import annotations

import argparse
import time

import torch

from raypoison.models import build_model
from raypoison.training.feature_bank import TrainingFeatures
from raypoison.training.loop import train
from raypoison.training.recipe import RecipeConfig

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="convnet")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--pool", type=int, default=2500)
    parser.add_argument("--poisons", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    model = build_model(args.arch, 10, MEAN, STD, params={"width": args.width}).to(device)
    pool = torch.randn(162, args.pool, model.feature_dim, generator=g).to(device)
    poisons = torch.randint(0, 256, (args.poisons, 3, 32, 32), dtype=torch.uint8,
                            generator=g).to(device)
    images = torch.cat([poisons[:1].expand(args.pool, -1, -1, -1), poisons])  # unread: banked
    labels = torch.randint(10, (args.pool + args.poisons,), generator=g).to(device)
    recipe = RecipeConfig(lr=0.01, epochs=args.epochs, milestones=(), batch_size=64)
    seconds, steps = [], 0
    for _ in range(args.repeats):
        features = TrainingFeatures(pool, torch.arange(args.pool), model, poisons)
        head = build_model(args.arch, 10, MEAN, STD, params={"width": args.width}).to(device)
        head.load_state_dict(model.state_dict())
        if device.type == "cuda":
            torch.cuda.synchronize()
        tick = time.perf_counter()
        steps = train(head, images, labels, recipe=recipe, seed=1, trainable="head",
                      features=features).steps
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - tick)
    print(f"{args.arch} width {args.width} on {args.device}: {steps} steps, pool {args.pool}, "
          f"{args.poisons} poisons; best {1000 * min(seconds) / steps:.3f} ms a step "
          f"(runs: {', '.join(f'{s:.2f}' for s in seconds)} s)")


if __name__ == "__main__":
    main()
