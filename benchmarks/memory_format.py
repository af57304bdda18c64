"""How much the channels-last layout buys on this machine: seconds per training step and per
image of a feature bank, for each model, in the default layout and in channels-last.

:func:`raypoison.models.to_device` puts models on a CPU in channels-last because of these
figures; run this on a GPU (``--device cuda``) before doing the same there.

    .venv/bin/python benchmarks/memory_format.py --threads 2
    .venv/bin/python benchmarks/memory_format.py --device cuda --models resnet18 --batch 512
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from raypoison.data.augment import apply_crop_flip
from raypoison.models import build_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
MODELS = {"resnet18": {}, "resnet18-w16": {"width": 16}, "convnet-w24": {"width": 24},
          "vgg11": {}, "mobilenetv2": {}}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(arch: str, params: dict, channels_last: bool, device: str, batch: int,
            bank_batch: int, repeats: int) -> tuple[float, float]:
    """(seconds per training step of ``batch`` images, milliseconds per banked image)."""
    torch.manual_seed(0)
    model = build_model(arch, 10, MEAN, STD, params=params).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    model.train()
    for i in range(repeats + 1):
        if i == 1:  # the first step warms up the kernels
            _sync(device)
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    step = (time.perf_counter() - start) / repeats

    model.eval()
    images = torch.randint(0, 256, (bank_batch, 3, 32, 32), dtype=torch.uint8, device=device)
    full = torch.full((bank_batch,), 2, device=device)
    with torch.no_grad():
        for i in range(repeats + 1):
            if i == 1:
                _sync(device)
                start = time.perf_counter()
            view = apply_crop_flip(images.float().div(255), full, full,
                                   torch.full((bank_batch,), bool(i % 2), device=device), 4)
            model.features(view)
    _sync(device)
    bank_ms = (time.perf_counter() - start) / repeats / bank_batch * 1e3
    return step, bank_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--models", default="resnet18-w16,convnet-w24",
                        help=f"comma-separated, from: {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=128, help="images per training step")
    parser.add_argument("--bank-batch", type=int, default=256,
                        help="images per feature-bank batch (the bank's CPU default)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"| model | layout | training step s ({args.batch} images) "
          f"| bank ms per image ({args.bank_batch} a batch) |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        arch = name.split("-")[0]
        for channels_last in (False, True):
            step, bank = measure(arch, MODELS[name], channels_last, args.device, args.batch,
                                 args.bank_batch, args.repeats)
            layout = "channels-last" if channels_last else "default"
            print(f"| {name} | {layout} | {step:.3f} | {bank:.3f} |", flush=True)


if __name__ == "__main__":
    main()
