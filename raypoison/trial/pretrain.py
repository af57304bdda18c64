"""Pre-training a model of a scenario from scratch on its data set (no Ray here).

Used when a scenario names no checkpoint; the execution layer runs it once per model as a Ray task
and caches the checkpoint under the run's output. The full victim zoo (CIFAR-100 pre-training and
the adversarially trained model) builds on this in ``raypoison pretrain``.
"""

from __future__ import annotations

from typing import Any

import torch

from raypoison.config.suite import ModelConfig
from raypoison.core.registry import Component
from raypoison.core.schema import to_plain
from raypoison.data import ImageData, load_dataset
from raypoison.models import ImageClassifier, build_model, checkpoint_bytes, to_device
from raypoison.training.adversarial import robust_accuracy
from raypoison.training.loop import accuracy, train


def pretrain(model_cfg: ModelConfig, data: ImageData, device: str = "cpu"
             ) -> tuple[ImageClassifier, dict[str, Any]]:
    """Train ``model_cfg`` on ``data`` from its seed; returns ``(model, meta)``."""
    assert model_cfg.pretrain is not None
    with torch.random.fork_rng(devices=[]):  # seeded weight init without touching global state
        torch.manual_seed(model_cfg.pretrain.seed)
        model = to_device(build_model(model_cfg.arch, data.num_classes, data.mean, data.std,
                                      data.image_shape[1], model_cfg.params), device)
    data = data.to(device)
    result = train(
        model, data.train_x, data.train_y, recipe=model_cfg.pretrain.recipe,
        seed=model_cfg.pretrain.seed, trainable="all",
    )
    meta = {
        "arch": model_cfg.arch,
        "params": to_plain(model_cfg.params),
        "recipe": to_plain(model_cfg.pretrain.recipe),
        "seed": model_cfg.pretrain.seed,
        "image_size": data.image_shape[1],
        "clean_accuracy": accuracy(model, data.test_x, data.test_y),
        "train_seconds": result.seconds,
    }
    adv = model_cfg.pretrain.recipe.adversarial
    if adv is not None:  # how robust the adversarial training made it, on up to 1,000 test images
        meta["robust_accuracy"] = robust_accuracy(
            model, data.test_x[:1000], data.test_y[:1000], epsilon=adv.epsilon, step=adv.step,
            steps=adv.steps)
    return model, meta


def pretrain_checkpoint(model_cfg: ModelConfig, dataset: Component, device: str = "cpu",
                        data: ImageData | None = None) -> bytes:
    """The checkpoint of ``model_cfg`` pre-trained on ``dataset`` (``data``: that data set,
    already decoded)."""
    data = load_dataset(dataset) if data is None else data
    model, meta = pretrain(model_cfg, data, device)
    meta["dataset"] = to_plain(dataset)
    return checkpoint_bytes(model.cpu(), meta)
